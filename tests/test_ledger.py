"""The ledger's writes, row by row, on both databases (PostgreSQL takes the one-statement path)."""

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.data import add_subscribers, delivery_rows, load_stories
from worker.delivery import ledger
from worker.delivery.outcome import Outcome, SendResult
from worker.delivery.plan import plan_edition
from worker.digest import week_window
from worker.ingest.subscribers import set_status
from worker.store.models import SubscriberStatus

KEY = "weekly-2025-W05"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)
LEASE = timedelta(minutes=5)
SENT = SendResult(Outcome.SENT, 250, "2.0.0 queued as A1")
LATER = SendResult(Outcome.TEMPORARY, 451, "4.3.0 try later")


@pytest.fixture
def leased(engine, settings, tmp_path):
    """Eight leased rows (one per region set, JP's already skipped at planning) and their emails."""
    load_stories(engine, tmp_path)
    add_subscribers(engine, 8)
    planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW)
    ids = sorted(d.id for d in delivery_rows(engine, KEY).values() if d.state == "pending")
    rows = ledger.lease_batch(engine, edition_id=planned.edition_id, ids=ids, worker="w1", now=NOW,
                              lease=timedelta(minutes=15))
    return engine, rows


def _rows(engine):
    return {d.id: d for d in delivery_rows(engine, KEY).values()}


def _book(engine, **kw):
    return ledger.BatchLedger(engine, worker="w1", max_attempts=3, retry_base=60, **kw)


def test_a_result_is_written_with_the_next_claim_and_the_last_on_close(leased):
    engine, rows = leased
    first, second = rows[0].id, rows[1].id
    book = _book(engine)
    assert book.claim([first], now=NOW, lease=LEASE) == {first: ledger.Claim("claimed", 1)}
    assert _rows(engine)[first].state == "sending"
    assert _rows(engine)[first].lease_until == NOW + LEASE
    book.record(first, result=SENT, message_id="<a@news.example>", attempts=1, now=NOW + timedelta(seconds=1))
    assert _rows(engine)[first].state == "sending"  # deferred: written with the next claim
    assert book.claim([second], now=NOW + timedelta(seconds=2), lease=LEASE) == {second: ledger.Claim("claimed", 1)}
    done = _rows(engine)[first]
    assert (done.state, done.last_code, done.last_reply, done.message_id) == (
        "sent", 250, "250 2.0.0 queued as A1", "<a@news.example>")
    assert done.sent_at == NOW + timedelta(seconds=1) and done.updated_at == NOW + timedelta(seconds=1)
    assert (done.claimed_by, done.lease_until, done.next_attempt_at, done.attempts) == (None, None, None, 1)
    book.record(second, result=LATER, message_id="<b@news.example>", attempts=1, now=NOW + timedelta(seconds=3))
    book.close()
    retry = _rows(engine)[second]
    assert (retry.state, retry.last_code, retry.sent_at, retry.message_id, retry.claimed_by) == (
        "failed", 451, None, None, None)
    wait = retry.next_attempt_at - (NOW + timedelta(seconds=3))
    assert timedelta(seconds=30) <= wait < timedelta(seconds=90)  # backoff(1) with base 60 s, jittered
    assert book.late == []


def test_a_claim_finds_rows_taken_paused_or_left(leased):
    engine, rows = leased
    a, b, c = rows[0], rows[1], rows[2]
    set_status(engine, c.email, SubscriberStatus.UNSUBSCRIBED)
    other = _book(engine)
    other.worker = "w2"
    assert other.claim([a.id], now=NOW, lease=LEASE) == {}  # w1 holds the batch lease
    book = _book(engine)
    claims = book.claim([a.id, b.id, c.id], now=NOW, lease=LEASE)
    assert claims == {a.id: ledger.Claim("claimed", 1), b.id: ledger.Claim("claimed", 1),
                      c.id: ledger.Claim("unsubscribed")}
    left = _rows(engine)[c.id]
    assert (left.state, left.skip_reason, left.attempts, left.claimed_by, left.lease_until) == (
        "skipped", "unsubscribed", 0, None, None)
    assert book.claim([a.id], now=NOW, lease=LEASE) == {}  # already sending: never claimed twice
    book.close()


def test_a_result_after_the_row_was_declared_unknown_is_reported_late(leased):
    engine, rows = leased
    row = rows[0].id
    for pipeline in (True, False):
        book = _book(engine, pipeline=pipeline)
        book.claim([row], now=NOW, lease=LEASE)
        assert ledger.expire_sending(engine, now=NOW + LEASE + timedelta(seconds=1)) == 1
        book.record(row, result=SENT, message_id="<a@news.example>", attempts=1, now=NOW + LEASE * 2)
        book.close()
        assert book.late == [row]
        assert _rows(engine)[row].state == "unknown" and _rows(engine)[row].sent_at is None
        row = rows[1].id


def test_every_outcome_sets_its_state(leased, engine):
    engine, rows = leased
    book = _book(engine)
    outcomes = [SENT, LATER, SendResult(Outcome.UNKNOWN, None, "connection lost after the final dot"),
                SendResult(Outcome.PERMANENT, 550, "550 5.1.1 no such user"),
                SendResult(Outcome.REJECTED, None, "cannot build message"),
                SendResult(Outcome.TEMPORARY, 452, "452 4.2.2 full")]
    attempts = [1, 1, 1, 1, 1, 3]  # the last one has used up NEWSLETTER_MAX_ATTEMPTS
    for row, result, tries in zip(rows, outcomes, attempts, strict=False):
        book.claim([row.id], now=NOW, lease=LEASE)
        book.record(row.id, result=result, message_id="<m@news.example>", attempts=tries, now=NOW)
    book.close()
    got = _rows(engine)
    states = [(got[r.id].state, got[r.id].last_code, got[r.id].next_attempt_at is not None) for r in rows[:6]]
    assert states == [("sent", 250, False), ("failed", 451, True), ("unknown", None, False),
                      ("bounced", 550, False), ("failed", None, False), ("failed", 452, False)]
    assert got[rows[2].id].message_id == "<m@news.example>"  # unknown keeps the id to look it up
    assert all(got[r.id].claimed_by is None and got[r.id].lease_until is None for r in rows[:6])
