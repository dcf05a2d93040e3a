"""`newsletter sources ...`: the feeds the worker polls."""

from __future__ import annotations

import json
from datetime import datetime

import click

from worker.cli.app import Context, cli, pass_ctx, print_table, region_option, require_readable
from worker.errors import UsageError
from worker.redact import mask_url


@cli.group()
def sources() -> None:
    """Feeds polled by the worker (conditional GET, backoff while failing)."""


@sources.command("add")
@click.argument("url")
@click.option("--region", help="Region code for items that carry none.")
@pass_ctx
def add(ctx: Context, url: str, region: str | None) -> None:
    """Poll URL (an http(s) feed or a file path) from now on."""
    from worker.ingest.fetch import SourceError, _scheme, check_url_destination
    from worker.ingest.sources import SourceExists, add_source

    code = region_option(region)
    url = url.strip()
    shown = mask_url(url)
    scheme = _scheme(url)
    if scheme not in ("", "http", "https") and len(scheme) > 1:
        raise UsageError(f"unsupported URL scheme {scheme!r}: only http(s) URLs and file paths")
    if scheme not in ("http", "https"):
        require_readable(url)
    else:
        try:
            warning = check_url_destination(url, allow_private=ctx.settings.fetch_allow_private)
        except SourceError as exc:
            raise UsageError(f"not added: {shown}: {exc}") from None
        if warning:
            click.echo(f"warning: {shown}: {warning}", err=True)
    try:
        add_source(ctx.engine, url, region=code)
    except SourceExists:
        raise UsageError(f"{shown} is already a source (`newsletter sources list`)") from None
    click.echo(f"added {shown}" + (f" (region {code})" if code else "")
               + f"; polled every {ctx.settings.sources_poll_minutes} min by the worker, "
               "`newsletter sources poll` polls it now")


@sources.command("remove")
@click.argument("url")
@pass_ctx
def remove(ctx: Context, url: str) -> None:
    """Stop polling URL (as given, or as `sources list` shows it). Its stories stay."""
    from worker.ingest.sources import list_sources, remove_source

    url = url.strip()
    if url in {entry["url"] for entry in ctx.settings.sources}:
        raise UsageError(f"{mask_url(url)} is a [[sources]] entry of the config file: remove it there")
    removed = remove_source(ctx.engine, url)
    if removed is None:
        known = [mask_url(row.url) for row in list_sources(ctx.engine)]
        raise UsageError(f"no source {mask_url(url)!r}" + (f"; sources: {', '.join(known)}" if known else ""))
    click.echo(f"removed {mask_url(removed.url)}; its stories stay")


@sources.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (times in UTC, with offset).")
@pass_ctx
def list_(ctx: Context, as_json: bool) -> None:
    """Every source and its health (times in NEWSLETTER_TIMEZONE, with their offset)."""
    from worker.ingest.sources import describe, list_sources, sync_config_sources

    sync_config_sources(ctx.engine, ctx.settings)
    rows = describe(list_sources(ctx.engine))
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        click.echo("no sources yet: `newsletter sources add URL [--region R]`, or [[sources]] in the config file")
        return
    tz = ctx.settings.tz

    def local(iso: str | None) -> str:
        # With the offset: the site's zone is not the reader's, nor the JSON's (UTC).
        return datetime.fromisoformat(iso).astimezone(tz).isoformat(" ", "minutes") if iso else "-"

    print_table(["url", "region", "from", "last success", "added", "failures", "next poll", "last error"],
                [[r["url"], r["region"] or "-", r["origin"], local(r["last_success"]), str(r["items_added"]),
                  str(r["consecutive_failures"]), local(r["next_poll"]),
                  (r["last_error"] or "-") if r["consecutive_failures"] else "-"] for r in rows])


@sources.command("poll")
@pass_ctx
def poll(ctx: Context) -> None:
    """Poll every source now (conditional GET: an unchanged feed costs one 304)."""
    from worker.clock import utcnow
    from worker.ingest.sources import poll_all_sources

    results = poll_all_sources(ctx.engine, ctx.settings, utcnow())
    if not results:
        click.echo("no sources to poll: `newsletter sources add URL [--region R]`")
        return
    bad = False
    for result in results:
        click.echo(str(result), err=result.outcome == "failed")
        for rejection in result.rejected:
            click.echo(f"rejected: {rejection}", err=True)
        bad |= result.outcome == "failed" or bool(result.rejected)
    if bad:
        raise click.exceptions.Exit(1)
