"""What `newsletter send` says, step by step: each step asks worker/editions/ to act and
puts what came back into words (stdout for what scripts read, stderr for warnings)."""

from __future__ import annotations

from datetime import date

import click
from sqlalchemy import Engine

from worker import editions
from worker.cli.preview import _regions
from worker.cli.report import held_hint, nothing_sent, print_status
from worker.cli.who import who as current_user
from worker.editions import Decision, EditionStatus, Released, Target
from worker.errors import ConfigError, UsageError
from worker.preview import size_line
from worker.settings import Settings
from worker.store.models import DeliveryState, EditionState

FAILURE_STATES = (DeliveryState.FAILED.value, DeliveryState.BOUNCED.value, DeliveryState.UNKNOWN.value)
NO_SUBSCRIBERS = "there are no active subscribers (`newsletter subscribers import FILE.csv`)"

resolve_edition = editions.resolve_edition
original_key = editions.original_key
count_failed = editions.count_failed


def resolve_window(settings: Settings, week: str | None, since: date | None, until: date | None) -> Target:
    return editions.resolve_window(settings, week, since, until)


def parse_region_option(text: str | None) -> tuple[str, ...] | None:
    return _regions(text) if text else None


def test_send(engine: Engine, settings: Settings, window, key: str, addresses: list[str],
              regions: tuple[str, ...] | None) -> int:
    copies = editions.send_test_copies(engine, settings, Target(window, key, "manual"), addresses, regions)
    for copy in copies:
        click.echo(f"test send to {copy.address}: {copy.outcome} {copy.summary}".rstrip())
    click.echo("no subscriber's ledger was touched")
    return 1 if any(copy.outcome != "sent" for copy in copies) else 0


def dry_run(engine: Engine, settings: Settings, window, key: str, regions: tuple[str, ...] | None, *,
            force: bool = False, retry: bool = False) -> int:
    """What `send` with the same options would do; nothing is sent or recorded."""
    run = editions.dry_run(engine, settings, Target(window, key, "manual"), regions, force=force, retry=retry)
    if run.retry is not None:
        click.echo(f"dry run: {key} ({run.state}): --retry-failed would re-queue {run.retry} failed rows")
        return 0
    if run.existing is not None:
        click.echo(f"dry run: {_exists_line(run.existing)} `send` would do nothing "
                   f"(--retry-failed re-queues failed rows, --force sends again as {run.next_force_key})")
        return 0
    click.echo(f"dry run of {run.key} ({window.label}): nothing is sent or recorded")
    for overlap in run.overlaps:
        click.echo(f"warning: overlaps {overlap.describe(settings.tz)}: `send` refuses it without --allow-overlap",
                   err=True)
    for row in run.sets:
        if row.variant is None:
            click.echo(f"  {row.regions:<24} {row.subscribers:>7} subscribers  skipped: no-stories")
            continue
        variant = row.variant
        click.echo(f"  {row.regions:<24} {row.subscribers:>7} subscribers  {variant.story_count:>3} stories  "
                   f"{variant.html_bytes / 1024:6.1f} KB{'  CLIPPED BY GMAIL' if variant.clipped else ''}")
    click.echo(f"would send {run.sending}, skip {run.skipped} (no-stories), {len(run.sets)} region sets")
    if not run.sending:
        why = _no_stories(engine, window, run.skipped) if run.skipped else NO_SUBSCRIBERS
        click.echo(f"warning: nothing would be sent: {why}", err=True)
    if run.largest_clipped is not None:
        click.echo("WARNING: " + size_line(run.largest_clipped), err=True)
    return 0


def _no_stories(engine: Engine, window, skipped: int) -> str:
    """Why every subscriber was skipped, in the words a newcomer needs."""
    stories = editions.window_story_count(engine, window)
    if not stories:
        where = f"{window.label} has no stories at all (`newsletter stories import SOURCE`)"
    else:
        where = (f"{window.label} has {stories} {'story' if stories == 1 else 'stories'}, all in regions "
                 f"nobody follows (`newsletter stories list --week {window.label}`)")
    return f"nobody had stories in their regions: all {skipped} subscribers skipped (no-stories); {where}"


def _exists_line(data: EditionStatus) -> str:
    counts = ", ".join(f"{n} {s}" for s, n in data.counts.items() if n)
    nothing = nothing_sent(data)
    return f"{data.key} already exists: {data.state}, {counts or 'no rows'}" + (f" ({nothing})." if nothing else ".")


def plan_or_reuse(engine: Engine, settings: Settings, *, key: str, kind: str, window, force: bool,
                  retry: bool, continue_open: bool = False) -> int | None:
    """The edition to deliver, or None when there is nothing to do; says which."""
    plan = editions.plan_or_reuse(engine, Target(window, key, kind), force=force, retry=retry,
                                  continue_open=continue_open, who=current_user(), wider=settings.wider)
    match plan.decision:
        case Decision.FORCED:
            click.echo(f"{plan.key}: planned ({plan.note}): {_planned_counts(plan.status)}")
        case Decision.PLANNED:
            click.echo(f"{plan.key}: planned {_planned_counts(plan.status)}")
        case Decision.REQUEUED:
            click.echo(f"{key}: {plan.requeued} failed rows re-queued")
            if plan.requeued and plan.state is EditionState.PAUSED:
                click.echo(f"{key} is paused ({plan.reason}): they go out after `newsletter resume {key}`")
        case Decision.HELD:
            click.echo(f"{key} is held: {plan.reason}. {held_hint(key)}")
        case Decision.CONTINUED:
            click.echo(f"{_exists_line(plan.status)} Still sending: continuing it.")
        case Decision.EXISTS:
            hint = (f"`newsletter resume {key}` continues it" if plan.state is EditionState.PAUSED
                    else "--retry-failed re-queues failures, --force sends again")
            click.echo(f"{_exists_line(plan.status)} Nothing done ({hint}).")
    return plan.edition_id


def release_held(engine: Engine, settings: Settings, key: str, *, approve: bool) -> int | None:
    """Approve (the edition to deliver, its rows planned again from what is stored now)
    or discard (None) a held edition."""
    done = editions.release(engine, settings, key, approve=approve, who=current_user())
    match done.outcome:
        case Released.MISSING:
            editions.require(engine, key)  # raises: no such edition, and the key it may mean
            raise UsageError(f"no edition {key!r}")  # made between the two reads
        case Released.NOT_HELD:
            raise UsageError(f"{done.key} is {done.state}, not held: nothing to "
                             f"{'approve' if approve else 'discard'}")
        case Released.RACED:
            raise UsageError(f"{done.key} was released by someone else just now (`newsletter status {done.key}`)")
    again = _planned_counts(editions.status(engine, done.edition_id)) if approve else None
    click.echo(f"{done.key}: {done.outcome} (it was held: {done.held_reason})"
               + (f"; planned again from what is stored now: {again}" if again else ""))
    return done.edition_id if approve else None


def _planned_counts(data: EditionStatus) -> str:
    skipped = data.skipped
    return f"{data.total} deliveries" + (f", {data.total - skipped} to send, {skipped} skipped "
                                         f"({', '.join(f'{n} {r}' for r, n in data.skip_reasons.items())})"
                                         if skipped else "")


def report_if_empty(engine: Engine, edition_id: int, *, window, scheduled: bool) -> int | None:
    """An edition whose every row is skipped (planned done at once): say so plainly. Exit
    status 1 for the scheduled week (nobody got the newsletter), 0 for a custom window;
    None when the edition has anything else in it."""
    data = editions.status(engine, edition_id)
    total, reasons = data.total, data.skip_reasons
    if data.skipped != total:
        return None
    if total == 0:
        why = NO_SUBSCRIBERS
    elif reasons == {"no-stories": total}:
        why = _no_stories(engine, window, total)
    else:
        why = f"all {total} subscribers skipped ({', '.join(f'{n} {r}' for r, n in reasons.items())})"
    click.echo(f"{data.key}: nothing was sent: {why}", err=True)
    return 1 if scheduled else 0


def deliver(engine: Engine, settings: Settings, edition_id: int, *, inline: bool, wait: bool) -> int:
    if inline:
        for report in editions.run_inline(engine, settings, edition_id):
            if report.stopped:
                click.echo(f"stopped: {report.stopped}", err=True)
    else:
        try:
            click.echo(f"enqueued {editions.hand_out(engine, settings, edition_id)} batches")
            if wait:
                _follow(engine, settings, edition_id)
        except editions.BrokerUnreachable as exc:
            raise ConfigError(
                f"{exc} (rows stay pending; the reconciler hands them out once a worker runs; --inline sends now)"
            ) from None
        if not wait:
            key = editions.status(engine, edition_id).key
            click.echo(f"a running worker (`celery -A worker worker`) sends them; follow it with "
                       f"`newsletter status {key}`, or wait for it: `newsletter send --edition {key} --wait`")
    return _final_report(engine, settings, edition_id, announce=inline or wait)


def _follow(engine: Engine, settings: Settings, edition_id: int) -> None:
    """A progress bar until nothing is open (editions.follow)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as bar:
        task = None
        for progress in editions.follow(engine, settings, edition_id):
            if task is None:
                task = bar.add_task(progress.key, total=progress.total)
            bar.update(task, completed=progress.done)


def _final_report(engine: Engine, settings: Settings, edition_id: int, *, announce: bool) -> int:
    full = editions.full_status(engine, settings, edition_id)
    data = full.status
    if announce:
        print_status(full, tz=settings.tz)
    bad = sum(data.counts[s] for s in FAILURE_STATES)
    if announce and (bad or data.state is EditionState.PAUSED):
        click.echo(f"{data.key}: {bad} failed, bounced or unknown"
                   + (f"; paused: {data.reason}" if data.state is EditionState.PAUSED else ""), err=True)
        return 1
    return 0
