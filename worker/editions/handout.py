"""Delivering an edition: to the broker (the only place that hands out to it) or in this
process, followed until nothing is open; and what the worker's tasks run (`deliver_batch`,
one batch claimed row by row, is the pipeline's own).

The Celery app is built on first hand-out and kept, one per broker URL, and Celery is
imported then, not before: the web app, which calls the door, loads no Celery module until
an operator hands an edition out (tests/test_layers.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Engine

from worker.clock import utcnow
from worker.delivery.pipeline import BatchReport
from worker.delivery.pipeline import deliver_batch as deliver_batch
from worker.delivery.pipeline import run_inline as _run_inline
from worker.delivery.schedule import Publish, Reconciled, dispatch, dispatch_recovered
from worker.delivery.schedule import reconcile as _reconcile
from worker.delivery.senders import make_sender_pool
from worker.delivery.status import Progress, edition_progress
from worker.settings import Settings
from worker.store.models import EditionState


class BrokerUnreachable(Exception):
    """The broker refused or never answered a hand-out. The rows not handed out stay
    pending: a running worker's reconciler hands them out once the broker is back."""

    def __init__(self, broker_url: str, cause: BaseException) -> None:
        super().__init__(f"cannot reach the broker at {broker_url}: {cause}")
        self.broker_url, self.cause = broker_url, cause


# Celery apps by broker URL, built on first hand-out and kept: an app holds its broker
# connection pool, and a new one per approval would open (and leak) a pool each time.
_APPS: dict[str, Any] = {}
_APPS_LOCK = threading.Lock()


def _publisher(settings: Settings) -> Publish:
    # Imported here, not at the top: the web app calls this module and must not load
    # Celery until an operator hands an edition out (tests/test_layers.py).
    from worker.celery_app import create_app, publisher

    with _APPS_LOCK:
        app = _APPS.get(settings.broker_url)
        if app is None:
            app = _APPS[settings.broker_url] = create_app(settings)
    return publisher(app)


def hand_out(engine: Engine, settings: Settings, edition_id: int, *, now: datetime | None = None) -> int:
    """The edition's due rows to the broker, in batches of ids; the number of batches.
    Raises BrokerUnreachable when the broker cannot take them."""
    try:
        return dispatch(engine, settings, edition_id, _publisher(settings), now or utcnow())
    except Exception as exc:  # noqa: BLE001 - kombu raises OperationalError and friends
        raise BrokerUnreachable(settings.broker_url, exc) from None


def run_inline(engine: Engine, settings: Settings, edition_id: int) -> list[BatchReport]:
    """Everything due in the edition, sent from this process, without a broker."""
    sender = make_sender_pool(settings)
    try:
        return _run_inline(engine, settings, edition_id, sender)
    finally:
        sender.close()


# Following an edition: how often it looks, and how often it hands out retries that came due.
FOLLOW_POLL_SECONDS = 0.5
FOLLOW_REDISPATCH_SECONDS = 2.0


def follow(engine: Engine, settings: Settings, edition_id: int) -> Iterator[Progress]:
    """The edition's progress, twice a second, until nothing is open. Meanwhile it hands
    out retries that come due, as the reconciler would, so following ends even where no
    beat runs. Rows waiting for their reader's morning may be hours away: following stops
    when only they are left."""
    last_hand_out = time.monotonic()
    while True:
        progress = edition_progress(engine, edition_id, now=utcnow())
        if progress is None:
            return
        yield progress
        if progress.state is not EditionState.SENDING or progress.open_rows in (0, progress.waiting_for_hour):
            return
        time.sleep(FOLLOW_POLL_SECONDS)
        if time.monotonic() - last_hand_out > FOLLOW_REDISPATCH_SECONDS:
            hand_out(engine, settings, edition_id)
            last_hand_out = time.monotonic()


def reconcile(engine: Engine, settings: Settings, publish: Publish, *, now: datetime | None = None) -> Reconciled:
    """The tick: plan the week that is due, expire stale leases, hand out due rows, finish
    what is done (worker/delivery/schedule.py)."""
    return _reconcile(engine, settings, publish, now or utcnow())


def recover(engine: Engine, settings: Settings, editions: set[int], publish: Publish) -> int:
    """Hand out again, ahead of the backlog, the rows a dead worker held."""
    return dispatch_recovered(engine, settings, editions, publish, utcnow())
