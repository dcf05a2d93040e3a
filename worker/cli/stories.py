"""`newsletter stories ...`"""

from __future__ import annotations

import json
from datetime import datetime

import click
from sqlalchemy import select

from worker.cli.app import Context, cli, pass_ctx, print_table, region_option, require_readable
from worker.clicks import flush_waiting, opens_of
from worker.store.db import session_scope
from worker.store.models import Story, StoryRegion


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

    region = region_option(region)
    for source in sources:
        # A path that is not there is a typo on the command line, as for `subscribers
        # import`; what a file or URL holds is judged item by item by the importer.
        if "://" not in source:
            require_readable(source)
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


@stories.command("list")
@click.option("--week", help="ISO week such as 2025-W05, in NEWSLETTER_TIMEZONE (default: every story).")
@click.option("--region", help="Only stories tagged with this region, e.g. RU.")
@click.option("--json", "as_json", is_flag=True,
              help="One story per line in the import format (`stories import` reads it back).")
@pass_ctx
def list_(ctx: Context, week: str | None, region: str | None, as_json: bool) -> None:
    """What is stored, newest first."""
    from worker.preview import resolve_week

    code = region_option(region)
    query = select(Story).order_by(Story.published_at.desc(), Story.id.desc())
    label = ""
    if week:
        window = resolve_week(week, ctx.settings)
        query = query.where(Story.published_at >= window.start, Story.published_at < window.end)
        label = f" in {window.label}"
    if code:
        query = query.where(Story.id.in_(select(StoryRegion.story_id).where(StoryRegion.region == code)))
        label += f" for {code}"
    with session_scope(ctx.engine) as session:
        found = list(session.scalars(query))
        rows = [_story_json(story) for story in found]
    # Opens through the click redirect, every edition's (worker/clicks.py): counts, never who.
    flush_waiting(ctx.engine, ctx.settings.optional_secret_key(), ctx.settings.ratelimit_storage_url)
    counts = opens_of(ctx.engine, [story.id for story in found])
    for story, row in zip(found, rows, strict=True):
        row["clicks"] = counts.get(story.id, 0)
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    tz = ctx.settings.tz
    print_table(["published", "regions", "title", "source", "opened", "id"],
                [[_local(row["published_at"], tz), " ".join(row["regions"]), row["title"], row["source"],
                  str(row["clicks"]), row["id"]] for row in rows])
    click.echo(f"{len(rows)} stories{label}")


def _story_json(story: Story) -> dict:
    return {"id": story.guid, "url": story.url, "title": story.title, "summary": story.summary_html,
            "regions": story.region_codes, "published_at": story.published_at.isoformat().replace("+00:00", "Z"),
            "source": story.source, "image_url": story.image_url, "language": story.language}


def _local(iso: str, tz) -> str:
    return datetime.fromisoformat(iso).astimezone(tz).strftime("%Y-%m-%d %H:%M")
