"""`newsletter operators ...` (named accounts for the console and the machine routes) and
`newsletter audit` (what operators changed, and who)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta

import click

from worker.cli.app import Context, cli, pass_ctx, print_table
from worker.errors import UsageError

SINCE = re.compile(r"(\d{1,4})([dhw])")


@cli.group()
def operators() -> None:
    """Named operators: each has a token of their own, and what they change is recorded
    with their name. Once one exists, every operator page needs credentials, from
    loopback too (NEWSLETTER_OPERATOR_TOKEN still works, recorded as "operator token")."""


@operators.command("add")
@click.argument("name")
@pass_ctx
def add(ctx: Context, name: str) -> None:
    """Make an operator; prints their token once (only a slow hash of it is kept)."""
    from worker.operators.accounts import OperatorError, add_operator

    try:
        token = add_operator(ctx.engine, name)
    except OperatorError as exc:
        raise UsageError(str(exc)) from None
    click.echo(f"operator {name} added. Their token, shown this once (it is not stored):\n\n  {token}\n\n"
               "Sign in to the operator pages with it as the password (any user name), or send it as "
               "`Authorization: Bearer TOKEN`.")


@operators.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array.")
@pass_ctx
def list_(ctx: Context, as_json: bool) -> None:
    """Every operator, who made them and when they were last seen."""
    from worker.operators.accounts import list_operators

    rows = list_operators(ctx.engine)
    if as_json:
        click.echo(json.dumps([{"name": r.name, "created_at": _iso(r.created_at), "created_by": r.created_by,
                                "last_seen_at": _iso(r.last_seen_at)} for r in rows], indent=2))
        return
    if not rows:
        click.echo("no operators: the operator pages take NEWSLETTER_OPERATOR_TOKEN, or a loopback client "
                   "while it is not set (`newsletter operators add NAME`)")
        return
    print_table(["name", "added", "by", "last seen"],
                [[r.name, _short(r.created_at), r.created_by, _short(r.last_seen_at) or "never"] for r in rows])


@operators.command("remove")
@click.argument("name")
@pass_ctx
def remove(ctx: Context, name: str) -> None:
    """Remove an operator: their token stops working at once."""
    from worker.operators.accounts import OperatorError, remove_operator

    try:
        remove_operator(ctx.engine, name)
    except OperatorError as exc:
        raise UsageError(str(exc)) from None
    click.echo(f"operator {name} removed")


@cli.command("audit")
@click.option("--since", help="How far back: 7d, 12h, 2w, or a date (YYYY-MM-DD, UTC). Default: 30d.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def audit(ctx: Context, since: str | None, limit: int, as_json: bool) -> None:
    """What operators changed, newest first: who, when, through what (cli or console)."""
    from worker.clock import utcnow
    from worker.operators.audit import audit_since

    start = _since(since or "30d", utcnow())
    rows = audit_since(ctx.engine, start, limit=limit)
    if as_json:
        for _, e in rows:
            click.echo(json.dumps({"at": _iso(e.at), "who": e.who, "via": e.via, "action": e.action,
                                   "target": e.target, "detail": e.detail}, ensure_ascii=False))
        return
    if not rows:
        click.echo(f"nothing changed by an operator since {start:%Y-%m-%d %H:%M} UTC")
        return
    print_table(["at (UTC)", "who", "via", "action", "target", "detail"],
                [[_short(e.at), e.who, e.via, e.action, e.target or "", e.detail or ""] for _, e in rows])


def _since(text: str, now: datetime) -> datetime:
    text = text.strip()
    match = SINCE.fullmatch(text)
    if match:
        count, unit = int(match.group(1)), match.group(2)
        return now - timedelta(**{{"d": "days", "h": "hours", "w": "weeks"}[unit]: count})
    try:
        return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=now.tzinfo)
    except ValueError:
        raise UsageError(f"--since {text!r}: give 7d, 12h, 2w or a date YYYY-MM-DD") from None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None


def _short(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else ""
