"""`newsletter send`, `status`, `pause`, `resume`."""

from __future__ import annotations

import json

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.cli.report import held_hint
from worker.errors import UsageError


@cli.command()
@click.option("--week", help="ISO week, e.g. 2025-W05 (default: the week that ended last).")
@click.option("--since", type=click.DateTime(["%Y-%m-%d"]), help="Custom window start (local date).")
@click.option("--until", type=click.DateTime(["%Y-%m-%d"]), help="Custom window end, exclusive.")
@click.option("--edition", "edition_key", metavar="KEY",
              help="An edition that exists, by key (e.g. weekly-2025-W05-force-2), instead of a window.")
@click.option("--to", "to", multiple=True, help="Test send to this address (repeatable); no ledger.")
@click.option("--regions", help="Region set for --to / --dry-run (default: every set).")
@click.option("--dry-run", is_flag=True, help="Say what the same command would do; send and record nothing.")
@click.option("--force", is_flag=True, help="Send again under a new edition key (audited).")
@click.option("--retry-failed", is_flag=True, help="Re-queue the edition's failed rows only.")
@click.option("--wait", is_flag=True, help="Follow the edition with a progress bar.")
@click.option("--inline", is_flag=True, help="Run in this process, without a broker.")
@click.option("--approve", is_flag=True, help="Release a held edition: it is sent (once).")
@click.option("--discard", is_flag=True, help="Drop a held edition: it is never sent.")
@pass_ctx
def send(ctx: Context, week, since, until, edition_key, to, regions, dry_run, force, retry_failed, wait,
         inline, approve, discard) -> None:
    """Plan an edition and deliver it (manual trigger).

    An edition that exists is only reported, unless --retry-failed, --force, or (while
    it is still sending) --inline or --wait, which continue it. A held edition (a week
    that looked wrong, or review mode) is sent with --approve or dropped with --discard.
    """
    from worker.cli import sending

    if week and (since or until):
        raise UsageError("give --week or --since/--until, not both")
    if bool(since) != bool(until):
        raise UsageError("--since and --until go together")
    if edition_key and (week or since):
        raise UsageError("give --edition, or --week or --since/--until, not both")
    if force and retry_failed:
        raise UsageError("--force and --retry-failed exclude each other")
    settings = ctx.settings
    if edition_key:
        window, key, kind = sending.resolve_edition(ctx.engine, settings, edition_key)
        if force:  # a forced copy of a forced copy is one more copy of the original
            key = sending.original_key(key)
    else:
        window, key, kind = sending.resolve_window(settings, week, since and since.date(), until and until.date())
    if approve or discard:
        if approve and discard:
            raise UsageError("--approve and --discard exclude each other")
        if to or dry_run or force or retry_failed or regions:
            raise UsageError("--approve and --discard take only --week or --edition (and --inline or --wait)")
        if approve:
            settings.require_secret_key()
        edition_id = sending.release_held(ctx.engine, key, approve=approve)
        if edition_id is None:
            return
        raise click.exceptions.Exit(sending.deliver(ctx.engine, settings, edition_id, inline=inline, wait=wait))
    codes = sending.parse_region_option(regions)
    if to:
        code = sending.test_send(ctx.engine, settings, window, key, list(to), codes)
        raise click.exceptions.Exit(code)
    if dry_run:
        code = sending.dry_run(ctx.engine, settings, window, key, codes, force=force, retry=retry_failed)
        raise click.exceptions.Exit(code)
    settings.require_secret_key()
    edition_id = sending.plan_or_reuse(ctx.engine, settings, key=key, kind=kind, window=window, force=force,
                                       retry=retry_failed, continue_open=inline or wait)
    if edition_id is None:
        return
    empty = sending.report_if_empty(ctx.engine, edition_id, window=window, scheduled=kind == "weekly")
    if empty is not None:
        raise click.exceptions.Exit(empty)
    code = sending.deliver(ctx.engine, settings, edition_id, inline=inline, wait=wait)
    raise click.exceptions.Exit(code)


@cli.command()
@click.argument("edition", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(ctx: Context, edition: str | None, as_json: bool) -> None:
    """An edition's counts by state, skip reason and SMTP code, why rows failed, which
    workers hold its rows (alive or dead) and what waits for the broker; without
    EDITION the recent editions."""
    from worker.cli.report import full_status, print_status
    from worker.delivery.pipeline import utcnow
    from worker.delivery.plan import require_edition
    from worker.delivery.status import edition_status, recent_editions

    if edition:
        now = utcnow()
        data = full_status(ctx.engine, ctx.settings, require_edition(ctx.engine, edition), now=now)
        if as_json:
            click.echo(json.dumps(data, indent=2, ensure_ascii=False))
        else:
            print_status(data, tz=ctx.settings.tz, now=now)
        return
    editions = [edition_status(ctx.engine, e, list_unknown=0) for e in recent_editions(ctx.engine)]
    if as_json:
        click.echo(json.dumps(editions, indent=2, ensure_ascii=False))
        return
    if not editions:
        click.echo("no editions yet")
    for data in editions:
        counts = ", ".join(f"{n} {s}" for s, n in data["counts"].items() if n)
        click.echo(f"{data['edition']}  {data['state']}  {data['total']} rows: {counts or 'none'}")
        if data["state"] == "held":
            click.echo(f"  held: {data['reason']}")
            click.echo(f"  {held_hint(data['edition'])}")


@cli.command()
@click.argument("edition")
@pass_ctx
def pause(ctx: Context, edition: str) -> None:
    """Stop handing out batches of an edition."""
    from worker.delivery.plan import pause_edition, require_edition

    row = require_edition(ctx.engine, edition)
    if not pause_edition(ctx.engine, row.id, "paused by operator"):
        raise UsageError(f"{edition} is {row.state}; only a sending edition can be paused")
    click.echo(f"{edition}: paused (batches in flight finish their current message and stop)")


@cli.command()
@click.argument("edition")
@click.option("--wait", is_flag=True, help="Follow the edition with a progress bar.")
@click.option("--inline", is_flag=True, help="Run in this process, without a broker.")
@pass_ctx
def resume(ctx: Context, edition: str, wait: bool, inline: bool) -> None:
    """Continue an edition from the ledger: a paused one, or one still sending whose rows
    wait for a worker. Any key, forced and manual ones included."""
    from worker.cli.sending import count_failed, deliver
    from worker.delivery.plan import require_edition, resume_edition
    from worker.store.models import EditionState

    row = require_edition(ctx.engine, edition)
    if resume_edition(ctx.engine, row.id):
        click.echo(f"{edition}: resumed")
    elif row.state == EditionState.SENDING.value:
        click.echo(f"{edition}: still sending; handing out its due rows now")
    else:
        failed = count_failed(ctx.engine, row.id) if row.state == EditionState.DONE.value else 0
        hint = (f"; `newsletter send --edition {edition} --retry-failed` re-queues its {failed} failed rows"
                if failed else "")
        raise UsageError(f"{edition} is {row.state}; only a paused or sending edition can be resumed{hint}")
    raise click.exceptions.Exit(deliver(ctx.engine, ctx.settings, row.id, inline=inline, wait=wait))
