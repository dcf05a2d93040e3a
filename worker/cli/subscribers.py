"""`newsletter subscribers ...`"""

from __future__ import annotations

import json
from pathlib import Path

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.errors import UsageError


@cli.group()
def subscribers() -> None:
    """Manage subscribers."""


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@pass_ctx
def import_(ctx: Context, file: Path) -> None:
    """Import a CSV with header email,name,regions."""
    from worker.ingest.subscribers import import_csv

    report = import_csv(ctx.engine, file)
    click.echo(
        f"subscribers: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.suppressed} kept unsubscribed, {len(report.rejected)} rejected"
    )
    for line, reason in report.rejected:
        click.echo(f"rejected: {file}: line {line}: {reason}", err=True)
    if report.rejected:
        raise click.exceptions.Exit(1)


@subscribers.command()
@click.argument("email")
@click.option("--regions", required=True, help="Codes in order, e.g. RU,UA.")
@click.option("--name", help="Name shown in the greeting and the To header.")
@click.option("--resubscribe", is_flag=True, help="Reactivate an unsubscribed or bounced address.")
@pass_ctx
def add(ctx: Context, email: str, regions: str, name: str | None, resubscribe: bool) -> None:
    """Add or update one subscriber."""
    from worker.ingest.subscribers import InvalidSubscriber, add_subscriber, make_input

    try:
        item = make_input(email, name, regions)
    except InvalidSubscriber as exc:
        raise UsageError(str(exc)) from None
    outcome = add_subscriber(ctx.engine, item, resubscribe=resubscribe)
    click.echo(f"{item.email}: {outcome} ({' '.join(item.regions)})")


@subscribers.command()
@click.argument("email")
@click.option("--purge", is_flag=True, help="Delete the record instead of keeping it as unsubscribed.")
@pass_ctx
def remove(ctx: Context, email: str, purge: bool) -> None:
    """Unsubscribe an address (kept as a suppression), or --purge it entirely."""
    from worker.ingest.subscribers import InvalidSubscriber, purge_subscriber, set_status
    from worker.store.models import SubscriberStatus

    try:
        if purge:
            found = purge_subscriber(ctx.engine, email)
        else:
            found = set_status(ctx.engine, email, SubscriberStatus.UNSUBSCRIBED) is not None
    except InvalidSubscriber as exc:
        raise UsageError(str(exc)) from None
    if not found:
        click.echo(f"error: no subscriber {email.strip()!r}", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"{email.strip()}: {'purged' if purge else 'unsubscribed'}")


@subscribers.command("list")
@click.option("--status", type=click.Choice(["active", "unsubscribed", "bounced", "complained"]))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def list_(ctx: Context, status: str | None, as_json: bool) -> None:
    """List subscribers."""
    from sqlalchemy import select

    from worker.store.db import session_scope
    from worker.store.models import Subscriber

    query = select(Subscriber).order_by(Subscriber.id)
    if status:
        query = query.where(Subscriber.status == status)
    with session_scope(ctx.engine) as session:
        rows = [
            {"email": s.email, "name": s.name or "", "regions": s.region_list, "status": s.status}
            for s in session.scalars(query)
        ]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("email", "name", "regions", "status", box=None)
    for row in rows:
        table.add_row(row["email"], row["name"], " ".join(row["regions"]), row["status"])
    Console(soft_wrap=True).print(table)
    click.echo(f"{len(rows)} subscribers")
