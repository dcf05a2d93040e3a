"""What `newsletter send` does, step by step, as plain functions."""

from __future__ import annotations

import re
import time
from datetime import date, timedelta

import click
from sqlalchemy import Engine

from worker.cli.report import full_status, held_hint, nothing_sent, print_status
from worker.cli.who import who as current_user
from worker.delivery.guard import overlapping_editions
from worker.delivery.pipeline import draft_renderer, run_inline, utcnow
from worker.delivery.plan import (
    active_region_sets,
    find_edition,
    get_edition,
    next_force_key,
    plan_edition,
    region_sets_with_stories,
    require_edition,
    retry_failed,
)
from worker.delivery.schedule import dispatch, release_local_send
from worker.delivery.senders import Outgoing, make_sender, make_sender_pool
from worker.delivery.status import edition_status, waiting_for_hour
from worker.digest import Window, custom_window
from worker.digest.queries import fetch_window_stories
from worker.errors import ConfigError, UsageError
from worker.preview import resolve_week, size_line, weekly_edition_key
from worker.render.compose import Addressee, compose
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Edition, EditionState

FAILURE_STATES = ("failed", "bounced", "unknown")
_FORCED = re.compile(r"(-force-\d+)+$")


def resolve_window(settings: Settings, week: str | None, since: date | None,
                   until: date | None) -> tuple[Window, str, str]:
    if since and until:
        try:
            window = custom_window(since, until, settings.tz)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return window, f"manual-{window.label}", "manual"
    window = resolve_week(week, settings)
    return window, weekly_edition_key(window.label), "weekly"


def parse_region_option(text: str | None) -> tuple[str, ...] | None:
    if not text:
        return None
    from worker.cli.preview import _regions

    return _regions(text)


def _active_sets(engine: Engine) -> list[tuple[str, int]]:
    with session_scope(engine) as session:
        return active_region_sets(session)


def test_send(engine: Engine, settings: Settings, window: Window, key: str, addresses: list[str],
              regions: tuple[str, ...] | None) -> int:
    from worker.readers.subscribers import InvalidSubscriber, check_address

    secret = settings.require_secret_key()
    if regions is None:
        sets = _active_sets(engine)
        if not sets:
            raise UsageError("no active subscribers to take a region set from: give --regions")
        regions = tuple(sets[0][0].split())
    checked = []
    for address in addresses:
        try:
            checked.append(check_address(address)[0])
        except InvalidSubscriber as exc:
            raise UsageError(f"--to: {exc}") from None
    variant = draft_renderer(engine, settings, window=window, edition_key=key).variant(regions)
    if variant is None:
        raise UsageError(f"no stories for {' '.join(regions)} in {window.label}")
    sender = make_sender(settings)
    failed = 0
    try:
        for address in checked:
            composed = compose(variant, Addressee(address, None, None), settings=settings, secret=secret,
                               test_send=True, now=utcnow())
            result = sender.send(Outgoing(settings.sender.addr_spec, composed.envelope_to,
                                          composed.data, composed.message_id, composed.smtputf8))
            click.echo(f"test send to {address}: {result.outcome} {result.summary}".rstrip())
            failed += result.outcome != "sent"
    finally:
        sender.close()
    click.echo("no subscriber's ledger was touched")
    return 1 if failed else 0


def dry_run(engine: Engine, settings: Settings, window: Window, key: str,
            regions: tuple[str, ...] | None, *, force: bool = False, retry: bool = False) -> int:
    """What `send` with the same options would do; nothing is sent or recorded.

    For an edition that exists that is "nothing" (or the failed rows it would re-queue),
    not the count of a fresh plan: only --force plans anew."""
    existing = find_edition(engine, key)
    if retry:
        if existing is None:
            raise UsageError(f"no edition {key!r} to retry")
        count = count_failed(engine, existing.id)
        click.echo(f"dry run: {key} ({existing.state}): --retry-failed would re-queue {count} failed rows")
        return 0
    if existing is not None and not force:
        click.echo(f"dry run: {_exists_line(engine, existing)} `send` would do nothing "
                   f"(--retry-failed re-queues failed rows, --force sends again as {next_force_key(engine, key)})")
        return 0
    if existing is not None:
        key = next_force_key(engine, key)
    sets = _active_sets(engine)
    if regions is not None:
        sets = [(r, n) for r, n in sets if tuple(r.split()) == regions]
    renderer = draft_renderer(engine, settings, window=window, edition_key=key)
    with session_scope(engine) as session:
        with_stories = region_sets_with_stories(session, window, [r for r, _ in sets])
    click.echo(f"dry run of {key} ({window.label}): nothing is sent or recorded")
    with session_scope(engine) as session:
        overlaps = overlapping_editions(session, window, key=original_key(key))
    for overlap in overlaps:
        click.echo(f"warning: overlaps {overlap.describe(settings.tz)}: `send` refuses it without --allow-overlap",
                   err=True)
    sending = skipped = 0
    clipped = False
    for regions_text, count in sets:
        if regions_text not in with_stories:
            click.echo(f"  {regions_text:<24} {count:>7} subscribers  skipped: no-stories")
            skipped += count
            continue
        variant = renderer.variant(tuple(regions_text.split()))
        clipped |= variant.clipped
        click.echo(f"  {regions_text:<24} {count:>7} subscribers  {variant.story_count:>3} stories  "
                   f"{variant.html_bytes / 1024:6.1f} KB{'  CLIPPED BY GMAIL' if variant.clipped else ''}")
        sending += count
    click.echo(f"would send {sending}, skip {skipped} (no-stories), {len(sets)} region sets")
    if not sending:
        why = _no_stories(engine, window, skipped) if skipped else NO_SUBSCRIBERS
        click.echo(f"warning: nothing would be sent: {why}", err=True)
    if clipped:
        click.echo("WARNING: " + size_line(max((renderer.variant(tuple(r.split())) for r, _ in sets
                                                if r in with_stories), key=lambda v: v.html_bytes)),
                   err=True)
    return 0


NO_SUBSCRIBERS = "there are no active subscribers (`newsletter subscribers import FILE.csv`)"


def _no_stories(engine: Engine, window: Window, skipped: int) -> str:
    """Why every subscriber was skipped, in the words a newcomer needs."""
    with session_scope(engine) as session:
        stories = len(fetch_window_stories(session, window))
    if not stories:
        where = f"{window.label} has no stories at all (`newsletter stories import SOURCE`)"
    else:
        where = (f"{window.label} has {stories} {'story' if stories == 1 else 'stories'}, all in regions "
                 f"nobody follows (`newsletter stories list --week {window.label}`)")
    return f"nobody had stories in their regions: all {skipped} subscribers skipped (no-stories); {where}"


def count_failed(engine: Engine, edition_id: int) -> int:
    return edition_status(engine, get_edition(engine, edition_id), list_unknown=0)["counts"]["failed"]


def _exists_line(engine: Engine, edition: Edition) -> str:
    data = edition_status(engine, edition, list_unknown=0)
    counts = ", ".join(f"{n} {s}" for s, n in data["counts"].items() if n)
    nothing = nothing_sent(data)
    return f"{edition.key} already exists: {edition.state}, {counts or 'no rows'}" + \
        (f" ({nothing})." if nothing else ".")


def plan_or_reuse(engine: Engine, settings: Settings, *, key: str, kind: str, window: Window,
                  force: bool, retry: bool, continue_open: bool = False) -> int | None:
    """The edition to deliver, or None when there is nothing to do.

    An edition that exists is only reported, unless `retry` (its failed rows go back to
    pending), `force` (a new key) or `continue_open` (it is still sending: deliver its
    due rows now, which --inline and --wait ask for)."""
    existing = find_edition(engine, key)
    now = utcnow()
    if existing is not None and force:
        new_key = next_force_key(engine, key)
        note = f"forced re-send of {key} by {current_user()} at {now.isoformat()}"
        planned = plan_edition(engine, key=new_key, kind=kind, window=window, now=now, note=note)
        click.echo(f"{new_key}: planned ({note}): {_planned_counts(engine, planned.edition_id)}")
        return planned.edition_id
    if existing is not None and retry:
        count = retry_failed(engine, existing.id, now)
        click.echo(f"{key}: {count} failed rows re-queued")
        if count and existing.state == EditionState.PAUSED.value:
            click.echo(f"{key} is paused ({existing.reason}): they go out after `newsletter resume {key}`")
            return None
        return existing.id if count else None
    if existing is not None and existing.state == EditionState.HELD.value and not force:
        click.echo(f"{key} is held: {existing.reason}. {held_hint(key)}")
        return None
    if existing is not None and continue_open and existing.state == EditionState.SENDING.value:
        click.echo(f"{_exists_line(engine, existing)} Still sending: continuing it.")
        return existing.id
    if existing is not None:
        hint = (f"`newsletter resume {key}` continues it" if existing.state == EditionState.PAUSED.value
                else "--retry-failed re-queues failures, --force sends again")
        click.echo(f"{_exists_line(engine, existing)} Nothing done ({hint}).")
        return None
    if retry:
        raise UsageError(f"no edition {key!r} to retry")
    planned = plan_edition(engine, key=key, kind=kind, window=window, now=now)
    click.echo(f"{key}: planned {_planned_counts(engine, planned.edition_id)}")
    return planned.edition_id


def release_held(engine: Engine, settings: Settings, key: str, *, approve: bool) -> int | None:
    """Approve (the edition to deliver, its rows planned again from what is stored now)
    or discard (None) a held edition."""
    from worker.delivery.plan import approve_edition, discard_edition

    edition = require_edition(engine, key)
    verb = "approved" if approve else "discarded"
    if edition.state != EditionState.HELD.value:
        raise UsageError(f"{edition.key} is {edition.state}, not held: nothing to "
                         f"{'approve' if approve else 'discard'}")
    who, now = current_user(), utcnow()
    if approve:
        done = approve_edition(engine, edition.id, now=now, who=who, local=release_local_send(edition, settings))
    else:
        done = discard_edition(engine, edition.id, now=now, who=who)
    if not done:
        raise UsageError(f"{edition.key} was released by someone else just now (`newsletter status {edition.key}`)")
    click.echo(f"{edition.key}: {verb} (it was held: {edition.reason})"
               + (f"; planned again from what is stored now: {_planned_counts(engine, edition.id)}" if approve else ""))
    return edition.id if approve else None


def _planned_counts(engine: Engine, edition_id: int) -> str:
    data = edition_status(engine, get_edition(engine, edition_id), list_unknown=0)
    skipped = data["counts"]["skipped"]
    return f"{data['total']} deliveries" + (f", {data['total'] - skipped} to send, {skipped} skipped "
                                            f"({', '.join(f'{n} {r}' for r, n in data['skip_reasons'].items())})"
                                            if skipped else "")


def report_if_empty(engine: Engine, edition_id: int, *, window: Window, scheduled: bool) -> int | None:
    """An edition whose every row is skipped (planned done at once): say so plainly. Exit
    status 1 for the scheduled week (nobody got the newsletter), 0 for a custom window;
    None when the edition has anything else in it."""
    data = edition_status(engine, get_edition(engine, edition_id), list_unknown=0)
    total, reasons = data["total"], data["skip_reasons"]
    if data["counts"]["skipped"] != total:
        return None
    if total == 0:
        why = NO_SUBSCRIBERS
    elif reasons == {"no-stories": total}:
        why = _no_stories(engine, window, total)
    else:
        why = f"all {total} subscribers skipped ({', '.join(f'{n} {r}' for r, n in reasons.items())})"
    click.echo(f"{data['edition']}: nothing was sent: {why}", err=True)
    return 1 if scheduled else 0


def deliver(engine: Engine, settings: Settings, edition_id: int, *, inline: bool, wait: bool) -> int:
    if inline:
        _run_inline(engine, settings, edition_id)
    else:
        from worker.celery_app import create_app
        from worker.tasks import publisher

        app = create_app(settings)
        try:
            batches = dispatch(engine, settings, edition_id, publisher(app), utcnow())
        except Exception as exc:  # kombu raises OperationalError and friends
            raise ConfigError(
                f"cannot reach the broker at {settings.broker_url}: {exc} "
                "(rows stay pending; the reconciler hands them out once a worker runs; --inline sends now)"
            ) from None
        click.echo(f"enqueued {batches} batches")
        if wait:
            _follow(engine, edition_id, lambda: dispatch(engine, settings, edition_id, publisher(app), utcnow()))
        else:
            key = get_edition(engine, edition_id).key
            click.echo(f"a running worker (`celery -A worker worker`) sends them; follow it with "
                       f"`newsletter status {key}`, or wait for it: `newsletter send --edition {key} --wait`")
    return _final_report(engine, settings, edition_id, announce=inline or wait)


def _run_inline(engine: Engine, settings: Settings, edition_id: int) -> None:
    sender = make_sender_pool(settings)
    try:
        for report in run_inline(engine, settings, edition_id, sender):
            if report.stopped:
                click.echo(f"stopped: {report.stopped}", err=True)
    finally:
        sender.close()


def _follow(engine: Engine, edition_id: int, redispatch) -> None:
    """Progress until nothing is open. Meanwhile it hands out retries that come due,
    as the reconciler would, so `--wait` finishes even where no beat runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=False) as progress:
        edition = get_edition(engine, edition_id)
        task = progress.add_task(edition.key, total=edition.total)
        last_dispatch = time.monotonic()
        while True:
            data = edition_status(engine, get_edition(engine, edition_id), list_unknown=0)
            open_now = data["counts"]["pending"] + data["counts"]["sending"] + data["retry_scheduled"]
            progress.update(task, completed=data["total"] - open_now)
            if data["state"] != EditionState.SENDING.value or open_now == 0:
                break
            # Rows waiting for their reader's morning may be hours away: following stops when
            # only they are left (the final report says when they fall due).
            if open_now == waiting_for_hour(engine, edition_id, now=utcnow()):
                break
            time.sleep(0.5)
            if time.monotonic() - last_dispatch > 2:
                redispatch()
                last_dispatch = time.monotonic()


def _final_report(engine: Engine, settings: Settings, edition_id: int, *, announce: bool) -> int:
    now = utcnow()
    data = full_status(engine, settings, get_edition(engine, edition_id), now=now)
    if announce:
        print_status(data, tz=settings.tz, now=now)
    bad = sum(data["counts"][s] for s in FAILURE_STATES)
    if announce and (bad or data["state"] == EditionState.PAUSED.value):
        click.echo(f"{data['edition']}: {bad} failed, bounced or unknown"
                   + (f"; paused: {data['reason']}" if data["state"] == "paused" else ""), err=True)
        return 1
    return 0


def resolve_edition(engine: Engine, settings: Settings, key: str) -> tuple[Window, str, str]:
    """`--edition KEY`: the window, key and kind of an edition that exists, whatever its key
    (a forced `weekly-2025-W05-force-3` cannot be named by --week)."""
    edition = require_edition(engine, key)
    tz = settings.tz
    window = Window(start=edition.window_start, end=edition.window_end, label=edition.label,
                    first_day=edition.window_start.astimezone(tz).date(),
                    last_day=(edition.window_end.astimezone(tz) - timedelta(days=1)).date())
    return window, edition.key, edition.kind


def original_key(key: str) -> str:
    """`weekly-2025-W05-force-3` -> `weekly-2025-W05` (next_force_key's suffix taken off)."""
    return _FORCED.sub("", key)
