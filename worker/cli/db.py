"""`newsletter db ...`"""

from __future__ import annotations

import click

from worker.cli.app import Context, cli, pass_ctx


@cli.group()
def db() -> None:
    """Database schema."""


@db.command()
@pass_ctx
def upgrade(ctx: Context) -> None:
    """Create or migrate the schema (safe to run again)."""
    from worker.store.db import upgrade_schema

    notes: list[str] = []
    before, after = upgrade_schema(ctx.raw_engine, notes=notes)
    if before == after:
        click.echo(f"schema already at revision {after}")
    else:
        click.echo(f"schema upgraded from {before or 'empty'} to {after}")
    for note in notes:
        click.echo(f"note: {note}")
