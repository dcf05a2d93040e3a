"""`newsletter demo`: the embedded default, end to end, with no services."""

from __future__ import annotations

import click

from worker import PROJECT_ROOT
from worker.cli.app import Context, cli, pass_ctx

EXAMPLES = PROJECT_ROOT / "examples"
DEMO_WEEK = "2025-W05"


@cli.command()
@pass_ctx
def demo(ctx: Context) -> None:
    """Load the bundled sample stories and subscribers into the default database."""
    from worker.ingest import import_sources
    from worker.ingest.subscribers import import_csv
    from worker.store.db import upgrade_schema

    settings = ctx.settings
    click.echo(f"database: {settings.database_url}")
    upgrade_schema(ctx.raw_engine)
    report = import_sources(ctx.engine, [str(EXAMPLES / "stories.json")])
    click.echo(f"stories: {report.added} added, {report.updated} updated, {report.unchanged} unchanged")
    subs = import_csv(ctx.engine, EXAMPLES / "subscribers.csv")
    click.echo(f"subscribers: {subs.added} added, {subs.updated} updated, {subs.unchanged} unchanged")
    problems = [str(r) for r in report.rejected] + [f"line {n}: {r}" for n, r in subs.rejected]
    for problem in problems:
        click.echo(f"rejected: {problem}", err=True)
    if problems:
        raise click.exceptions.Exit(1)
