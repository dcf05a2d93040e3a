"""Worker liveness: a heartbeat per process, so a dead worker's rows move on in seconds.

Without it a killed worker's rows wait for their leases: the batch lease
(NEWSLETTER_BATCH_LEASE_SECONDS), the hand-out mark (NEWSLETTER_REDISPATCH_SECONDS)
and the send lease, ten to thirty minutes. With it, every process that may hold
leases renews a row in `workers` every few seconds; a process whose heartbeat is
older than NEWSLETTER_LIVENESS_SECONDS is dead, and any live process (or the
reconciler) ends its leases at once: its pending rows are handed out again and
its rows in `sending` become `unknown` ("worker died during the SMTP
transaction"), never re-sent.

The heartbeat lives in the database, not Redis: the database already decides
every claim, so a worker that cannot reach it cannot send either, and a Redis
restart (which empties it) must not make every live worker look dead.

A worker that is alive but stopped (SIGSTOP, a paused VM) past the timeout is
treated as dead. Nothing is sent twice: its claims and records are
compare-and-sets on `claimed_by`, which the recovery cleared, so when it wakes
up it loses the rows it had not claimed, and the result of the one transaction
it had in flight arrives too late to change the row from `unknown`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from worker.store.db import session_scope
from worker.store.models import Delivery, DeliveryState, Edition, EditionState, Worker

log = logging.getLogger(__name__)
D = Delivery.__table__
W = Worker.__table__
SENDING = DeliveryState.SENDING.value
DIED = "worker died during the SMTP transaction"
# Beats per timeout: a worker must miss several in a row to be called dead.
BEATS_PER_TIMEOUT = 6


def heartbeat(engine: Engine, name: str, now: datetime) -> None:
    """Say that `name` is alive (insert or renew its row)."""
    with session_scope(engine) as session:
        renewed = session.execute(update(W).where(W.c.name == name).values(heartbeat_at=now)).rowcount
        if renewed:
            return
    try:
        with session_scope(engine) as session:
            session.execute(insert(W).values(name=name, started_at=now, heartbeat_at=now))
    except IntegrityError:  # inserted by a concurrent beat of the same name
        pass


def retire(engine: Engine, name: str) -> None:
    """A clean exit: the name is gone (its leases were released by its batches)."""
    with session_scope(engine) as session:
        session.execute(delete(W).where(W.c.name == name))


def alive(engine: Engine, *, now: datetime, timeout: timedelta) -> dict[str, bool]:
    """Every known worker name and whether its heartbeat is fresh."""
    with session_scope(engine) as session:
        rows = session.execute(select(W.c.name, W.c.heartbeat_at)).all()
    return {name: beat >= now - timeout for name, beat in rows}


def recover(engine: Engine, *, now: datetime, timeout: timedelta) -> set[int]:
    """End the leases of workers whose heartbeat is older than `timeout`.

    One transaction: the dead workers' rows are deleted first (a compare-and-set on the
    heartbeat, so a worker that beat in the meantime keeps everything), then their rows
    in `sending` become `unknown` and their other rows lose lease and hand-out mark, so
    they are handed out once more. Only those: rows whose messages still wait in the queue
    keep their mark (re-publishing the whole backlog on each recovery piled up copies of
    every batch). A message the dead process had reserved but not begun holds no lease;
    the broker gives it back after its visibility timeout, or the reconciler hands its
    rows out after NEWSLETTER_REDISPATCH_SECONDS. Returns the editions to hand out again.
    """
    cutoff = now - timeout
    with session_scope(engine) as session:
        dead = list(session.scalars(select(W.c.name).where(W.c.heartbeat_at < cutoff)))
        if not dead:
            return set()
        dead = list(session.scalars(
            delete(W).where(W.c.name.in_(dead), W.c.heartbeat_at < cutoff).returning(W.c.name)))
        if not dead:
            return set()
        unknown = session.execute(
            update(D).where(D.c.claimed_by.in_(dead), D.c.state == SENDING)
            .values(state=DeliveryState.UNKNOWN.value, claimed_by=None, lease_until=None, last_reply=DIED,
                    updated_at=now)
        ).rowcount or 0
        freed = session.execute(update(D).where(D.c.claimed_by.in_(dead))
                                .values(claimed_by=None, lease_until=None, batch_token=None, enqueued_at=None,
                                        updated_at=now).returning(D.c.edition_id))
        held = {edition_id for (edition_id,) in freed}
        editions = set(session.scalars(select(Edition.id).where(Edition.id.in_(held),
                                                                Edition.state == EditionState.SENDING.value)))
    log.warning("workers %s stopped beating before %s: %d rows in SMTP transactions now unknown; "
                "editions %s handed out again", ", ".join(dead), cutoff.isoformat(), unknown,
                sorted(editions) or "none")
    return editions


class Heartbeat:
    """A daemon thread: beat every `timeout / BEATS_PER_TIMEOUT`, and after each beat
    recover dead workers' rows and pass the editions concerned to `on_recovered`."""

    def __init__(self, engine: Engine, name: str, *, timeout: timedelta, clock: Callable[[], datetime],
                 on_recovered: Callable[[set[int]], None] | None = None) -> None:
        self.engine, self.name, self.timeout, self.clock = engine, name, timeout, clock
        self.on_recovered = on_recovered
        self._beaten: datetime | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{name}", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        try:
            retire(self.engine, self.name)
        except SQLAlchemyError:
            log.warning("could not remove worker %s from the heartbeat table", self.name, exc_info=True)

    def beat(self) -> None:
        now = self.clock()
        heartbeat(self.engine, self.name, now)
        beaten, self._beaten = self._beaten, now
        if beaten is not None and now - beaten > self.timeout:
            # This process could not beat either (the database was away): every other
            # worker's heartbeat is as old as ours. Judge nobody until they had a turn.
            log.info("heartbeat of %s back after %.0f s; recovery waits a round", self.name,
                     (now - beaten).total_seconds())
            return
        editions = recover(self.engine, now=now, timeout=self.timeout)
        if editions and self.on_recovered is not None:
            self.on_recovered(editions)

    def _run(self) -> None:
        interval = self.timeout.total_seconds() / BEATS_PER_TIMEOUT
        while not self._stop.wait(interval):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - a database outage must not end the heartbeat thread
                log.warning("heartbeat of %s failed; trying again in %.0f s", self.name, interval, exc_info=True)
