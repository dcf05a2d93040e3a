"""What `newsletter send` does, step by step, as plain functions."""

from __future__ import annotations

import getpass
import time
from datetime import date

import click
from sqlalchemy import Engine, func, select

from worker.delivery.pipeline import renderer_for, run_inline, utcnow
from worker.delivery.plan import (
    find_edition,
    get_edition,
    next_force_key,
    plan_edition,
    region_sets_with_stories,
    retry_failed,
)
from worker.delivery.schedule import dispatch
from worker.delivery.senders import Outgoing, make_sender, make_sender_pool
from worker.delivery.status import edition_status
from worker.digest import Window, custom_window
from worker.errors import ConfigError, UsageError
from worker.preview import resolve_week, size_line, weekly_edition_key
from worker.render.compose import Addressee, compose
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import EditionState, Subscriber, SubscriberStatus

FAILURE_STATES = ("failed", "bounced", "unknown")


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
        return list(session.execute(
            select(Subscriber.regions, func.count()).where(Subscriber.status == SubscriberStatus.ACTIVE.value)
            .group_by(Subscriber.regions).order_by(func.count().desc(), Subscriber.regions)).all())


class _Draft:
    """An unsaved edition for the renderer: test sends and dry runs record nothing."""

    def __init__(self, key: str, window: Window) -> None:
        self.id = -abs(hash(key)) or -1
        self.key, self.label = key, window.label
        self.window_start, self.window_end = window.start, window.end


def test_send(engine: Engine, settings: Settings, window: Window, key: str, addresses: list[str],
              regions: tuple[str, ...] | None) -> int:
    from worker.ingest.subscribers import InvalidSubscriber, check_address

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
    variant = renderer_for(engine, settings, _Draft(key, window)).variant(regions)
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
            regions: tuple[str, ...] | None) -> int:
    sets = _active_sets(engine)
    if regions is not None:
        sets = [(r, n) for r, n in sets if tuple(r.split()) == regions]
    renderer = renderer_for(engine, settings, _Draft(key, window))
    with session_scope(engine) as session:
        with_stories = region_sets_with_stories(session, window, [r for r, _ in sets])
    click.echo(f"dry run of {key} ({window.label}): nothing is sent or recorded")
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
    if clipped:
        click.echo("WARNING: " + size_line(max((renderer.variant(tuple(r.split())) for r, _ in sets
                                                if r in with_stories), key=lambda v: v.html_bytes)),
                   err=True)
    return 0


def plan_or_reuse(engine: Engine, settings: Settings, *, key: str, kind: str, window: Window,
                  force: bool, retry: bool) -> int | None:
    existing = find_edition(engine, key)
    now = utcnow()
    if existing is not None and force:
        new_key = next_force_key(engine, key)
        note = f"forced re-send of {key} by {getpass.getuser()} at {now.isoformat()}"
        planned = plan_edition(engine, key=new_key, kind=kind, window=window, now=now, note=note)
        click.echo(f"{new_key}: planned ({note})")
        return planned.edition_id
    if existing is not None and retry:
        count = retry_failed(engine, existing.id, now)
        click.echo(f"{key}: {count} failed rows re-queued")
        return existing.id if count else None
    if existing is not None:
        data = edition_status(engine, existing, list_unknown=0)
        counts = ", ".join(f"{n} {s}" for s, n in data["counts"].items() if n)
        click.echo(f"{key} already exists: {existing.state}, {counts or 'no rows'}. "
                   "Nothing done (--retry-failed re-queues failures, --force sends again).")
        return None
    if retry:
        raise UsageError(f"no edition {key!r} to retry")
    planned = plan_edition(engine, key=key, kind=kind, window=window, now=now)
    edition = get_edition(engine, planned.edition_id)
    click.echo(f"{key}: planned {edition.total} deliveries")
    return planned.edition_id


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
    return _final_report(engine, edition_id, announce=inline or wait)


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
            time.sleep(0.5)
            if time.monotonic() - last_dispatch > 2:
                redispatch()
                last_dispatch = time.monotonic()


def _final_report(engine: Engine, edition_id: int, *, announce: bool) -> int:
    data = edition_status(engine, get_edition(engine, edition_id))
    if announce:
        print_status(data)
    bad = sum(data["counts"][s] for s in FAILURE_STATES)
    if announce and (bad or data["state"] == EditionState.PAUSED.value):
        click.echo(f"{data['edition']}: {bad} failed, bounced or unknown"
                   + (f"; paused: {data['reason']}" if data["state"] == "paused" else ""), err=True)
        return 1
    return 0


def print_status(data: dict) -> None:
    click.echo(f"{data['edition']} ({data['label']}): {data['state']}"
               + (f" ({data['reason']})" if data["reason"] else ""))
    if data["note"]:
        click.echo(f"  note: {data['note']}")
    click.echo(f"  {data['total']} deliveries: " + ", ".join(f"{n} {s}" for s, n in data["counts"].items()))
    if data["retry_scheduled"]:
        click.echo(f"  {data['retry_scheduled']} failed rows have a retry scheduled")
    for reason, n in data["skip_reasons"].items():
        click.echo(f"  skipped {reason}: {n}")
    for code, n in data["smtp_codes"].items():
        click.echo(f"  smtp {code}: {n}")
    for row in data["unknown"]:
        click.echo(f"  unknown: delivery {row['delivery']} {row['email']}: {row['reason']}")
