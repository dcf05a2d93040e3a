"""What liveness hands out again after a dead worker, and when it may judge (worker/delivery/liveness.py),
on both databases."""

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.data import add_subscribers, delivery_rows, load_stories
from worker.delivery import ledger
from worker.delivery.liveness import Heartbeat, alive, heartbeat, recover
from worker.delivery.plan import plan_edition
from worker.digest import week_window

KEY = "weekly-2025-W05"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)
TIMEOUT = timedelta(seconds=30)


@pytest.fixture
def edition(engine, settings, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 12)
    planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW)
    ids = sorted(d.id for d in delivery_rows(engine, KEY).values() if d.state == "pending")
    return planned.edition_id, ids


def test_a_recovery_hands_out_again_only_the_rows_the_dead_worker_held(engine, edition):
    """Rows whose batches still wait in the queue keep their hand-out mark: one message per
    batch at a time, not a copy of the whole backlog on every recovery."""
    edition_id, ids = edition
    held, queued = ids[:4], ids[4:]
    ledger.mark_enqueued(engine, ids=ids, now=NOW)
    ledger.lease_batch(engine, edition_id=edition_id, ids=held, worker="host:9", now=NOW, lease=timedelta(minutes=15))
    heartbeat(engine, "host:9", NOW)
    assert recover(engine, now=NOW + 2 * TIMEOUT, timeout=TIMEOUT) == {edition_id}
    rows = {d.id: d for d in delivery_rows(engine, KEY).values()}
    assert all(rows[i].claimed_by is None and rows[i].enqueued_at is None for i in held)
    assert all(rows[i].enqueued_at is not None for i in queued)
    ready = ledger.dispatchable(engine, edition_id=edition_id, now=NOW + 2 * TIMEOUT,
                                redispatch_after=timedelta(minutes=10), batch_size=200)
    assert ready == [held]


def test_a_process_back_from_a_database_outage_judges_nobody_until_the_others_had_a_turn(engine, edition):
    """After an outage longer than the liveness timeout every heartbeat is stale; the first
    process back must not call the others dead (their rows in `sending` would end `unknown`)."""
    edition_id, ids = edition
    clock = [NOW]
    me = Heartbeat(engine, "host:1", timeout=TIMEOUT, clock=lambda: clock[0])
    me.beat()
    heartbeat(engine, "host:2", NOW)
    ledger.lease_batch(engine, edition_id=edition_id, ids=ids[:3], worker="host:2", now=NOW,
                       lease=timedelta(minutes=15))
    clock[0] = NOW + 3 * TIMEOUT  # the database was away for a minute and a half
    me.beat()
    assert alive(engine, now=clock[0], timeout=TIMEOUT) == {"host:1": True, "host:2": False}
    assert {d.claimed_by for d in delivery_rows(engine, KEY).values() if d.id in ids[:3]} == {"host:2"}
    heartbeat(engine, "host:2", clock[0] + timedelta(seconds=2))  # the other process beats in its turn
    clock[0] += timedelta(seconds=5)
    me.beat()
    assert {d.claimed_by for d in delivery_rows(engine, KEY).values() if d.id in ids[:3]} == {"host:2"}
    # One that really died is recovered by this process's beats (every few seconds) once its heartbeat is stale.
    for _ in range(8):
        clock[0] += TIMEOUT / 6
        me.beat()
    assert {d.claimed_by for d in delivery_rows(engine, KEY).values() if d.id in ids[:3]} == {None}
