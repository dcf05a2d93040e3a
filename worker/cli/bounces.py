"""`newsletter bounces process`: read bounces and complaints (docs/bounces.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.cli.who import who
from worker.clock import utcnow
from worker.errors import UsageError


@cli.group()
def bounces() -> None:
    """Bounces and complaints heard after the relay accepted a message."""


@bounces.command("process")
@click.option("--maildir", type=click.Path(path_type=Path), help="Read this Maildir (processed mail is flagged seen).")
@click.option("--mbox", type=click.Path(path_type=Path), help="Read this mbox file (never changed).")
@click.option("--dry-run", is_flag=True, help="Only read: apply nothing, flag or move no mail.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: one JSON object per report, a line each.")
@pass_ctx
def process(ctx: Context, maildir: Path | None, mbox: Path | None, dry_run: bool, as_json: bool) -> None:
    """Read DSNs and complaints; without an option, NEWSLETTER_BOUNCE_MAILDIR and NEWSLETTER_BOUNCE_MAILBOX."""
    from worker.bounces.mailboxes import process_configured, process_maildir, process_mbox

    if maildir and mbox:
        raise UsageError("give --maildir or --mbox, not both")
    if as_json and not dry_run:
        raise UsageError("--json goes with --dry-run (what a mailbox would do)")
    now = utcnow()
    if maildir:
        if not maildir.is_dir():
            raise UsageError(f"cannot read {maildir}: not a folder")
        summary = process_maildir(ctx.engine, ctx.settings, maildir, now=now, dry_run=dry_run)
    elif mbox:
        if not mbox.is_file():
            raise UsageError(f"cannot read {mbox}: not a file")
        summary = process_mbox(ctx.engine, ctx.settings, mbox, now=now, dry_run=dry_run)
    else:
        summary = process_configured(ctx.engine, ctx.settings, now=now, dry_run=dry_run)
        if summary is None:
            raise UsageError("no mailbox: set NEWSLETTER_BOUNCE_MAILBOX (imaps://user:password@host/INBOX) "
                             "or NEWSLETTER_BOUNCE_MAILDIR, or give --maildir DIR or --mbox FILE")
    if dry_run:
        for line in summary.readings:
            fields = (line["kind"] or "ignored", line["reason"], line["recipient"], line["code"], line["ignored"])
            text = f"{line['file']}: " + " ".join(str(f) for f in fields if f)
            # A Maildir file name is anyone's bytes: never a terminal control sequence.
            click.echo(json.dumps(line, ensure_ascii=False) if as_json else
                       "".join(c if c.isprintable() else "?" for c in text))
        if summary.kept:
            raise SystemExit(1)
        return
    click.echo(summary.describe())
    for reason, count in sorted(summary.ignored.items()):
        click.echo(f"  ignored {count}: {reason}")
    for kept in summary.kept:
        click.echo(f"  kept: {kept}", err=True)
    if summary.kept:
        raise SystemExit(1)


@bounces.command("review")
@click.option("--permanent", "permanent", type=int, metavar="ID",
              help="Decide: a permanent bounce (the reader is bounced).")
@click.option("--ignore", "ignore", type=int, metavar="ID", help="Decide: not the reader's; nothing changes.")
@click.option("--json", "as_json", is_flag=True, help="The list as JSON.")
@pass_ctx
def review(ctx: Context, permanent: int | None, ignore: int | None, as_json: bool) -> None:
    """Reports of ours whose reason could not be read: list them, or decide one."""
    from worker.bounces.apply import NotForReview, decide
    from worker.bounces.review import waiting

    if permanent is not None and ignore is not None:
        raise UsageError("give --permanent ID or --ignore ID, not both")
    if permanent is not None or ignore is not None:
        event_id = permanent if permanent is not None else ignore
        try:
            event = decide(ctx.engine, event_id, permanent=permanent is not None, now=utcnow(),
                           who=_who())
        except NotForReview as exc:
            raise UsageError(str(exc)) from None
        click.echo(f"report {event.id}: {event.kind}")
        return
    rows = waiting(ctx.engine)
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    if not rows:
        click.echo("no reports waiting for review")
        return
    for row in rows:
        reader = row["reader"] or row["recipient"] or "-"
        click.echo(f"{row['id']}  {row['received_at']}  {row['edition'] or '-'}  {reader}"
                   f"  {row['code'] or '-'}  {row['diagnostic'] or '(no diagnostic)'}")
    click.echo(f"{len(rows)} waiting: `newsletter bounces review --permanent ID` bounces the reader, "
               "`--ignore ID` leaves them be")


def _who() -> str:
    return f"cli ({who()})"


def _register_reactivate() -> None:
    from worker.cli.subscribers import subscribers

    @subscribers.command("reactivate")
    @click.argument("email")
    @click.option("--reason", required=True, help="Why (kept in the reader's history with who did it).")
    @click.option("--force", is_flag=True, help="Also a reader who complained (only at their request).")
    @pass_ctx
    def reactivate_command(ctx: Context, email: str, reason: str, force: bool) -> None:
        """Undo a bounce: a bounced reader active again (a complained one only with --force)."""
        from worker.bounces.reactivate import CannotReactivate, reactivate
        from worker.store.models import ChangeVia

        try:
            before = reactivate(ctx.engine, email, reason=reason, who=_who(), via=ChangeVia.CLI,
                                now=utcnow(), force=force)
        except CannotReactivate as exc:
            raise UsageError(str(exc)) from None
        click.echo(f"{email}: {before} -> active")


_register_reactivate()
