"""`newsletter send`, `status`, `pause`, `resume`."""

from __future__ import annotations

import json
import sys

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.cli.report import held_hint
from worker.errors import UsageError
from worker.readiness import require_ready
from worker.render.links import one_click_warning
from worker.store.models import EditionState


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
@click.option("--yes", "-y", is_flag=True,
              help="Send without asking, even a week the guard would hold (for scripts and cron).")
@click.option("--allow-overlap", is_flag=True,
              help="Send although the window overlaps an edition that exists (its readers get those stories twice).")
@pass_ctx
def send(ctx: Context, week, since, until, edition_key, to, regions, dry_run, force, retry_failed, wait,
         inline, approve, discard, yes, allow_overlap) -> None:
    """Plan an edition and deliver it (manual trigger).

    An edition that exists is only reported, unless --retry-failed, --force, or (while
    it is still sending) --inline or --wait, which continue it. A held edition (a week
    that looked wrong, or review mode) is sent with --approve or dropped with --discard.

    On a terminal, before anything goes to subscribers, it prints what the guard sees
    (stories per region against their usual count, the newest story's age, reasons to
    hold) and asks "Send to N subscribers?"; --yes skips the question. Not on a terminal (cron, a
    script), a week the guard would hold is refused with its reasons (exit 1) unless --yes,
    and any other is sent as before.

    A window that overlaps an edition that exists (held, sending, paused or done) is refused
    on both paths, naming that edition and its window, unless --allow-overlap (--force
    re-sends its own edition without it).
    """
    from worker import editions
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
    warning = one_click_warning(settings)
    if warning:
        click.echo(f"warning: {warning}", err=True)
    if edition_key:
        window, key, kind = editions.resolve_edition(ctx.engine, settings, edition_key)
        if force:  # a forced copy of a forced copy is one more copy of the original
            key = editions.original_key(key)
    else:
        window, key, kind = sending.resolve_window(settings, week, since and since.date(), until and until.date())
    if approve or discard:
        if approve and discard:
            raise UsageError("--approve and --discard exclude each other")
        if to or dry_run or force or retry_failed or regions:
            raise UsageError("--approve and --discard take only --week or --edition (and --inline or --wait)")
        if approve:
            settings.require_secret_key()
            require_ready(settings)
            _confirm_approval(ctx.engine, settings, key, yes=yes)
        edition_id = sending.release_held(ctx.engine, settings, key, approve=approve)
        if edition_id is None:
            return
        empty = sending.report_if_empty(ctx.engine, edition_id, window=window, scheduled=kind == "weekly")
        if empty is not None:
            raise click.exceptions.Exit(empty)
        raise click.exceptions.Exit(sending.deliver(ctx.engine, settings, edition_id, inline=inline, wait=wait))
    codes = sending.parse_region_option(regions)
    if to:
        code = sending.test_send(ctx.engine, settings, window, key, list(to), codes)
        raise click.exceptions.Exit(code)
    if dry_run:
        code = sending.dry_run(ctx.engine, settings, window, key, codes, force=force, retry=retry_failed)
        raise click.exceptions.Exit(code)
    settings.require_secret_key()
    require_ready(settings)  # real readers over SMTP: nothing sample, no guessable key
    _confirm_send(ctx.engine, settings, key=key, window=window, force=force, retry=retry_failed, yes=yes,
                  allow_overlap=allow_overlap)
    edition_id = sending.plan_or_reuse(ctx.engine, settings, key=key, kind=kind, window=window, force=force,
                                       retry=retry_failed, continue_open=inline or wait)
    if edition_id is None:
        return
    empty = sending.report_if_empty(ctx.engine, edition_id, window=window, scheduled=kind == "weekly")
    if empty is not None:
        raise click.exceptions.Exit(empty)
    code = sending.deliver(ctx.engine, settings, edition_id, inline=inline, wait=wait)
    raise click.exceptions.Exit(code)


def _interactive() -> bool:
    """Someone at a terminal can answer a question; a pipe or cron cannot."""
    return sys.stdin.isatty()


def _ask(question: str, *, refused: str) -> None:
    """A yes/no question on stderr; no (the default) is said plainly and exits 1."""
    if not click.confirm(question, default=False, err=True):
        click.echo(f"not sent: you answered no; {refused}", err=True)
        raise click.exceptions.Exit(1)


def _confirm_send(engine, settings, *, key: str, window, force: bool, retry: bool, yes: bool,
                  allow_overlap: bool = False) -> None:
    """Show the guard's view of what is about to go out and ask, or refuse a held-looking
    week when nobody can be asked. Returns when sending may go ahead. The view and the
    question go to stderr: stdout stays what scripts read (the planned line first)."""
    from worker import editions

    existing = editions.find(engine, key)
    if retry:
        if existing is None:
            return  # plan_or_reuse says there is nothing to retry
        count = editions.count_failed(engine, existing.id)
        if count and not yes and _interactive():
            _ask(f"Send again to {count} subscribers whose delivery failed?",
                 refused="the failed rows stay as they are")
        return
    if existing is not None and not force:
        return  # reported, or continued: nothing new is planned
    check = _guard(engine, settings, window, key=key, allow_overlap=allow_overlap)
    if check.overlaps and not allow_overlap:
        _show_guard(check, window, tz=settings.tz)
        first = check.overlaps[0]
        click.echo(f"error: not sent: {window.label} overlaps {first.describe(settings.tz)}"
                   + (f" and {len(check.overlaps) - 1} more" if len(check.overlaps) > 1 else "")
                   + "; its readers would get the same stories twice. Nothing was planned; run it again "
                   "with --allow-overlap to send anyway", err=True)
        raise click.exceptions.Exit(1)
    count = _recipients(engine, settings, window)
    if not count:
        return  # nobody would get it: plan_or_reuse records and says so
    if _interactive():
        _show_guard(check, window, tz=settings.tz)
        if check.hold:
            click.echo("warning: a scheduled send of this week would be held", err=True)
        if not yes:
            _ask(f"Send to {count} subscribers?", refused="nothing was planned")
        return
    if not check.hold:
        return  # a script or cron job: sent as before, without a word more
    _show_guard(check, window, tz=settings.tz)
    if yes:
        click.echo(f"warning: sending {window.label} although the guard would hold it (--yes)", err=True)
        return
    click.echo(f"error: not sent: the guard would hold {window.label} ({check.hold}); nothing was planned. "
               "Check the stories (`newsletter sources list`, `newsletter preview`), then run it again with "
               "--yes to send it anyway", err=True)
    raise click.exceptions.Exit(1)


def _confirm_approval(engine, settings, key: str, *, yes: bool) -> None:
    """--approve on a terminal: the hold, what the guard sees now, and the question. Not on
    a terminal, --approve is itself the decision and goes ahead as before."""
    from worker import editions

    edition = editions.find(engine, key)
    if edition is None or edition.state != EditionState.HELD.value:
        return  # release_held says why there is nothing to approve
    if not _interactive():
        return
    window = editions.resolve_edition(engine, settings, key).window
    click.echo(f"{key} is held: {edition.reason}", err=True)
    _show_guard(_guard(engine, settings, window, key=key), window, tz=settings.tz)
    # Approval plans the rows again from what is stored now: this is the count it will send.
    count = _recipients(engine, settings, window)
    if count and not yes:
        _ask(f"Send to {count} subscribers?", refused=f"{key} stays held")


def _guard(engine, settings, window, *, key: str, allow_overlap: bool = False):
    from worker import editions

    return editions.guard_view(engine, settings, window, key=key, allow_overlap=allow_overlap)


def _show_guard(check, window, *, tz) -> None:
    from worker.clock import utcnow
    from worker.delivery.guard import HISTORY_WEEKS

    click.echo(f"the guard's view of {window.label} (what a scheduled send would check):", err=True)
    if not check.counts:
        click.echo("  no active subscribers", err=True)
    for region, count in check.counts.items():
        click.echo(f"  {region}: {count} {'story' if count == 1 else 'stories'} "
                   f"(usual {check.usual[region]:g}, median of the last {HISTORY_WEEKS} weeks)", err=True)
    if check.newest is not None:
        end = min(window.end, utcnow())
        age = (end - check.newest).total_seconds() / 86400
        click.echo(f"  newest story: {check.newest:%Y-%m-%d %H:%M} UTC, {max(age, 0):.1f} days before "
                   f"{'the window ended' if end == window.end else 'now'}", err=True)
    for overlap in check.overlaps:
        click.echo(f"  overlaps {overlap.describe(tz)}", err=True)
    click.echo(f"  would hold: {check.hold}" if check.hold else "  nothing to hold", err=True)


def _recipients(engine, settings, window) -> int:
    from worker import editions

    return editions.recipients(engine, window, wider=settings.wider)


@cli.command()
@click.argument("edition", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def status(ctx: Context, edition: str | None, as_json: bool) -> None:
    """An edition's counts by state, skip reason and SMTP code, why rows failed, which
    workers hold its rows (alive or dead) and what waits for the broker; without
    EDITION the recent editions."""
    from worker import editions
    from worker.cli.report import late_lines, print_status, resolution_lines

    if edition:
        from worker.clicks import flush_waiting

        flush_waiting(ctx.engine, ctx.settings.optional_secret_key(), ctx.settings.ratelimit_storage_url)
        full = editions.full_status(ctx.engine, ctx.settings, edition)
        if as_json:
            click.echo(json.dumps(full.to_json(), indent=2, ensure_ascii=False))
        else:
            print_status(full, tz=ctx.settings.tz)
        return
    recent = editions.recent(ctx.engine)
    if as_json:
        click.echo(json.dumps([data.to_json() for data in recent], indent=2, ensure_ascii=False))
        return
    if not recent:
        click.echo("no editions yet")
    for data in recent:
        counts = ", ".join(f"{n} {s}" for s, n in data.counts.items() if n)
        click.echo(f"{data.key}  {data.state}  {data.total} rows: {counts or 'none'}")
        if data.state is EditionState.HELD:
            click.echo(f"  held: {data.reason}")
            click.echo(f"  {held_hint(data.key)}")
        for line in [*resolution_lines(data), *late_lines(data)]:
            click.echo(f"  {line}")


@cli.command()
@click.argument("edition")
@pass_ctx
def pause(ctx: Context, edition: str) -> None:
    """Stop handing out batches of an edition."""
    from worker import editions

    state = editions.pause(ctx.engine, edition)
    if state is not None:
        raise UsageError(f"{edition} is {state}; only a sending edition can be paused")
    click.echo(f"{edition}: paused (batches in flight finish their current message and stop)")


@cli.command()
@click.argument("edition")
@click.option("--wait", is_flag=True, help="Follow the edition with a progress bar.")
@click.option("--inline", is_flag=True, help="Run in this process, without a broker.")
@pass_ctx
def resume(ctx: Context, edition: str, wait: bool, inline: bool) -> None:
    """Continue an edition from the ledger: a paused one, or one still sending whose rows
    wait for a worker. Any key, forced and manual ones included."""
    from worker import editions
    from worker.cli.sending import deliver
    from worker.editions import Resumed

    done = editions.resume(ctx.engine, edition)
    if done.outcome is Resumed.RESUMED:
        click.echo(f"{edition}: resumed")
    elif done.outcome is Resumed.STILL_SENDING:
        click.echo(f"{edition}: still sending; handing out its due rows now")
    else:
        hint = (f"; `newsletter send --edition {edition} --retry-failed` re-queues its {done.failed} failed rows"
                if done.failed else "")
        raise UsageError(f"{edition} is {done.state}; only a paused or sending edition can be resumed{hint}")
    raise click.exceptions.Exit(deliver(ctx.engine, ctx.settings, done.edition_id, inline=inline, wait=wait))
