"""`newsletter stories ...`"""

from __future__ import annotations

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.errors import UsageError


@cli.group()
def stories() -> None:
    """Stories from feeds and JSON."""


@stories.command("import")
@click.argument("sources", nargs=-1, required=True)
@click.option("--region", help="Region code for items that carry none.")
@pass_ctx
def import_(ctx: Context, sources: tuple[str, ...], region: str | None) -> None:
    """Import RSS, Atom, a JSON array or JSON Lines from files or http(s) URLs."""
    from worker.ingest import import_sources
    from worker.regions import RegionError, normalise_region

    if region is not None:
        try:
            region = normalise_region(region)
        except RegionError as exc:
            raise UsageError(f"--region: {exc}") from None
    report = import_sources(ctx.engine, sources, default_region=region,
                            allow_private=ctx.settings.fetch_allow_private)
    click.echo(
        f"stories: {report.added} added, {report.updated} updated, "
        f"{report.unchanged} unchanged, {len(report.rejected)} rejected"
    )
    for rejection in report.rejected:
        click.echo(f"rejected: {rejection}", err=True)
    if report.rejected:
        raise click.exceptions.Exit(1)
