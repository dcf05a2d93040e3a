"""The ledger's writes, row by row, on both databases. PostgreSQL normally takes the
one-statement path; every test also runs there on the transaction path, so the two
are held to the same assertions."""

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.data import add_subscribers, delivery_rows, load_stories
from worker.delivery import ledger
from worker.delivery.outcome import Outcome, SendResult
from worker.delivery.plan import plan_edition
from worker.digest import week_window
from worker.readers.subscribers import set_status
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


# (database, open_ledger's one_statement): None is the usual choice for the database; "group"
# is the usual choice with the step going through a StatementGroup, as a batch's lanes do.
PATHS = {"sqlite": ("sqlite", None), "postgresql": ("postgresql", None), "postgresql-transactions": ("postgresql", False),
         "postgresql-group": ("postgresql", "group")}


def paths(*names):
    return pytest.mark.parametrize("db_url, book_path", [PATHS[n] for n in names], ids=names, indirect=["db_url"])


every_path = paths("sqlite", "postgresql", "postgresql-transactions", "postgresql-group")


def _book(engine, one_statement=None, worker="w1", **kw):
    if one_statement == "group":
        group = ledger.open_group(engine, worker=worker, max_attempts=3, retry_base=60)
        return ledger.open_ledger(engine, worker=worker, max_attempts=3, retry_base=60, group=group, **kw)
    return ledger.open_ledger(engine, worker=worker, max_attempts=3, retry_base=60, one_statement=one_statement, **kw)


@every_path
def test_a_result_is_written_with_the_next_claim_and_the_last_on_close(leased, book_path):
    engine, rows = leased
    first, second = rows[0].id, rows[1].id
    book = _book(engine, book_path)
    assert book.claim([first], now=NOW, lease=LEASE) == {first: ledger.Claim(ledger.ClaimState.CLAIMED, 1)}
    assert _rows(engine)[first].state == "sending"
    assert _rows(engine)[first].lease_until == NOW + LEASE
    book.record(first, result=SENT, message_id="<a@news.example>", attempts=1, now=NOW + timedelta(seconds=1))
    assert _rows(engine)[first].state == "sending"  # deferred: written with the next claim
    assert book.claim([second], now=NOW + timedelta(seconds=2), lease=LEASE) == {second: ledger.Claim(ledger.ClaimState.CLAIMED, 1)}
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


@every_path
def test_a_claim_finds_rows_taken_or_left(leased, book_path):
    engine, rows = leased
    a, b, c = rows[0], rows[1], rows[2]
    set_status(engine, c.email, SubscriberStatus.UNSUBSCRIBED)
    other = _book(engine, book_path, worker="w2")
    assert other.claim([a.id], now=NOW, lease=LEASE) == {}  # w1 holds the batch lease
    book = _book(engine, book_path)
    claims = book.claim([a.id, b.id, c.id], now=NOW, lease=LEASE)
    assert claims == {a.id: ledger.Claim(ledger.ClaimState.CLAIMED, 1), b.id: ledger.Claim(ledger.ClaimState.CLAIMED, 1),
                      c.id: ledger.Claim(ledger.ClaimState.SKIPPED, reason="unsubscribed")}
    left = _rows(engine)[c.id]
    assert (left.state, left.skip_reason, left.attempts, left.claimed_by, left.lease_until) == (
        "skipped", "unsubscribed", 0, None, None)
    assert book.claim([a.id], now=NOW, lease=LEASE) == {}  # already sending: never claimed twice
    book.close()


@every_path
def test_a_result_after_the_row_was_declared_unknown_is_reported_late(leased, book_path):
    engine, rows = leased
    row = rows[0].id
    for pipeline in (True, False):
        book = _book(engine, book_path, pipeline=pipeline)
        book.claim([row], now=NOW, lease=LEASE)
        assert ledger.expire_sending(engine, now=NOW + LEASE + timedelta(seconds=1)) == 1
        book.record(row, result=SENT, message_id="<a@news.example>", attempts=1, now=NOW + LEASE * 2)
        book.close()
        assert book.late == [row]
        assert _rows(engine)[row].state == "unknown" and _rows(engine)[row].sent_at is None
        row = rows[1].id


@every_path
def test_every_outcome_sets_its_state(leased, book_path):
    engine, rows = leased
    book = _book(engine, book_path)
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


def _history(engine, email):
    import sqlalchemy as sa

    from worker.store.db import session_scope
    from worker.store.models import Subscriber, SubscriberEvent

    with session_scope(engine) as session:
        return [tuple(row) for row in session.execute(
            sa.select(SubscriberEvent.kind, SubscriberEvent.via, SubscriberEvent.status, SubscriberEvent.regions,
                      SubscriberEvent.note, SubscriberEvent.at)
            .join(Subscriber, Subscriber.id == SubscriberEvent.subscriber_id).where(Subscriber.email == email)
            .order_by(SubscriberEvent.id))]


@every_path
def test_a_refusal_at_send_bounces_the_reader_with_a_history_row_and_only_an_active_one(leased, book_path):
    """The row bounced and the reader bounced with their event, at the result's instant:
    the codes, not the reply (it quotes the address). A reader who left between the claim
    and the refusal keeps their status and gets no event."""
    from worker.store.db import session_scope
    from worker.store.models import Subscriber

    engine, rows = leased
    refused = SendResult(Outcome.PERMANENT, 550, "5.1.1 <reader0@example.org>: no such user")
    active, leaving = rows[0], rows[1]
    book = _book(engine, book_path)
    book.claim([active.id, leaving.id], now=NOW, lease=LEASE)
    set_status(engine, leaving.email, SubscriberStatus.UNSUBSCRIBED)
    before = {email: _history(engine, email) for email in (active.email, leaving.email)}
    at = NOW + timedelta(seconds=1)
    book.record(leaving.id, result=refused, message_id=None, attempts=1, now=at)
    book.record(active.id, result=refused, message_id=None, attempts=1, now=at)
    book.close()
    got = _rows(engine)
    assert (got[active.id].state, got[leaving.id].state) == ("bounced", "bounced")
    with session_scope(engine) as session:
        reader = session.get(Subscriber, active.subscriber_id)
        assert (reader.status, reader.status_changed_at) == ("bounced", at)
        assert session.get(Subscriber, leaving.subscriber_id).status == "unsubscribed"
    assert _history(engine, active.email) == [*before[active.email], (
        "bounced", "refused-at-send", "bounced", " ".join(active.regions), "refused at send 550 5.1.1", at)]
    assert _history(engine, leaving.email) == before[leaving.email]


@every_path
def test_nothing_is_claimed_while_the_edition_is_paused(leased, book_path):
    from worker.delivery.plan import pause_edition, resume_edition

    engine, rows = leased
    edition_id = delivery_rows(engine, KEY)[rows[0].email].edition_id
    book = _book(engine, book_path)
    assert book.claim([rows[0].id], now=NOW, lease=LEASE) == {rows[0].id: ledger.Claim(ledger.ClaimState.CLAIMED, 1)}
    book.record(rows[0].id, result=SENT, message_id="<a@news.example>", attempts=1, now=NOW)
    assert pause_edition(engine, edition_id, "operator")
    assert book.claim([rows[1].id], now=NOW, lease=LEASE) == {}  # the result above is still written
    assert _rows(engine)[rows[0].id].state == "sent" and _rows(engine)[rows[1].id].state == "pending"
    assert resume_edition(engine, edition_id)
    assert book.claim([rows[1].id], now=NOW, lease=LEASE) == {rows[1].id: ledger.Claim(ledger.ClaimState.CLAIMED, 1)}
    book.close()


@every_path
def test_a_naive_time_is_refused_not_guessed(leased, book_path):
    engine, rows = leased
    book = _book(engine, book_path)
    from sqlalchemy.exc import StatementError

    # SQLAlchemy wraps the column type's ValueError in a StatementError; the single statement raises it as is.
    with pytest.raises((ValueError, StatementError), match="naive datetime given to a UTC column"):
        book.claim([rows[0].id], now=NOW.replace(tzinfo=None), lease=LEASE)
    book.close()


@pytest.mark.parametrize("outcome", [SENT, SendResult(Outcome.PERMANENT, 550, "5.1.1 no such user")],
                         ids=["sent", "bounced"])
@paths("postgresql", "postgresql-transactions")
def test_a_lost_database_connection_is_an_operational_error_and_the_result_is_kept(leased, book_path, db_url,
                                                                                  outcome):
    """What the lanes wait out (and the task retries on): on either path, however the
    connection broke. A result the relay gave is never dropped with the failed statement:
    once the database is back, a fresh connection writes it."""
    import sqlalchemy as sa
    from sqlalchemy.exc import OperationalError

    from tests.support.proxy import CuttableProxy
    from worker.store.db import create_db_engine

    engine, rows = leased
    url = sa.make_url(db_url)
    proxy = CuttableProxy(url.port or 5432)
    far = create_db_engine(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    try:
        book = _book(far, book_path)
        book.claim([rows[0].id], now=NOW, lease=LEASE)
        proxy.cut(30)
        with pytest.raises(OperationalError):
            book.record(rows[0].id, result=outcome, message_id="<a@news.example>", attempts=1, now=NOW)
            book.claim([rows[1].id], now=NOW, lease=LEASE)
        assert _rows(engine)[rows[0].id].state == "sending"
        with pytest.raises(OperationalError):  # still away
            book.reconnect()  # a held connection is opened again here, a pooled one by the next claim
            book.claim([rows[1].id], now=NOW, lease=LEASE)
        assert [p.delivery_id for p in book.pending] == [rows[0].id]
        proxy.restore()
        book.reconnect()
        claimed = book.claim([rows[1].id], now=NOW, lease=LEASE)
        assert claimed == {rows[1].id: ledger.Claim(ledger.ClaimState.CLAIMED, 1)}
        book.close()
    finally:
        proxy.close()
        far.dispose()
    assert book.late == []
    assert _rows(engine)[rows[0].id].state == {Outcome.SENT: "sent", Outcome.PERMANENT: "bounced"}[outcome.outcome]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_lanes_share_statements_and_each_gets_its_own_claims(leased):
    """Group commit: lanes asking at the same moment go out in one statement; each lane gets
    exactly its claims, each result is written once, and nobody's row is claimed twice."""
    import threading

    engine, rows = leased
    group = ledger.open_group(engine, worker="w1", max_attempts=3, retry_base=60)
    statements = []
    run = group._book._record_and_claim

    def counted(items, ids, **kw):
        statements.append((len(items), len(ids)))
        return run(items, ids, **kw)

    group._book._record_and_claim = counted
    got, start = {}, threading.Barrier(4)

    def lane(mine):
        book = ledger.open_ledger(engine, worker="w1", max_attempts=3, retry_base=60, group=group)
        start.wait()
        for row in mine:
            claim = book.claim([row.id], now=NOW, lease=LEASE)
            got[row.id] = claim
            book.record(row.id, result=SENT, message_id=f"<{row.id}@news.example>", attempts=1, now=NOW)
        book.close()
        assert book.late == []

    threads = [threading.Thread(target=lane, args=(rows[n::4],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    group.close()
    assert got == {row.id: {row.id: ledger.Claim(ledger.ClaimState.CLAIMED, 1)} for row in rows}
    assert {d.state for i, d in _rows(engine).items() if i in got} == {"sent"}
    assert sum(claimed for _, claimed in statements) == len(rows)
    assert sum(results for results, _ in statements) == len(rows)
    # Alone, each lane needs a statement per row and one for its last result: fewer means
    # some statements carried several lanes' steps.
    assert len(statements) < len(rows) + 4


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_failed_group_statement_fails_every_lane_in_it(leased):
    from sqlalchemy.exc import DBAPIError

    engine, rows = leased
    group = ledger.open_group(engine, worker="w1", max_attempts=3, retry_base=60)
    book = ledger.open_ledger(engine, worker="w1", max_attempts=3, retry_base=60, group=group)
    group._book._raw.close()  # the shared connection is gone
    with pytest.raises(DBAPIError):
        book.claim([rows[0].id], now=NOW, lease=LEASE)
    assert _rows(engine)[rows[0].id].state == "pending"  # nothing claimed, so nothing may be sent


def test_a_retried_task_takes_its_own_batchs_rows_back_from_another_process(engine, settings, tmp_path):
    """The lease follows the batch: rows leased for task T by a process that gave up on them
    (its batch failed, its heartbeat still fresh) come back to T's retry in another process
    at once; a different task (another copy of the batch) still finds them taken. The
    process that held them can no longer claim them (its compare-and-set on claimed_by loses)."""
    load_stories(engine, tmp_path)
    add_subscribers(engine, 8)
    planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW)
    ids = sorted(d.id for d in delivery_rows(engine, KEY).values() if d.state == "pending")
    batch = timedelta(minutes=15)

    def lease(worker, token):
        return [r.id for r in ledger.lease_batch(engine, edition_id=planned.edition_id, ids=ids, worker=worker,
                                                 now=NOW, lease=batch, token=token)]

    assert lease("host:1", "task-a") == ids
    assert lease("host:2", "task-b") == []      # another task: the lease holds
    assert lease("host:2", "task-a") == ids     # the same task, retried elsewhere: its rows
    assert {d.claimed_by for d in _rows(engine).values() if d.id in ids} == {"host:2"}
    old = _book(engine, worker="host:1")
    assert old.claim(ids[:1], now=NOW, lease=LEASE) == {}
    old.close()
    ledger.release(engine, ids=ids, worker="host:2", now=NOW)
    assert lease("host:3", "task-c") == ids     # released: anyone's again


@every_path
def test_a_claim_whose_reply_was_lost_is_recognised_by_its_lease(leased, book_path):
    """The database committed the claim and went away before answering: asked again, the row
    is `sending` under this worker and this very lease, so it is this lane's to send (not
    left to end `unknown`). Another lease time or another worker is not a match."""
    engine, rows = leased
    book = _book(engine, book_path)
    assert book.claim([rows[0].id], now=NOW, lease=LEASE)[rows[0].id].state is ledger.ClaimState.CLAIMED
    book.close()
    assert ledger.claimed_before(engine, ids=[rows[0].id], worker="w1", lease_until=NOW + LEASE) == {rows[0].id: 1}
    assert ledger.claimed_before(engine, ids=[rows[0].id], worker="w1", lease_until=NOW + 2 * LEASE) == {}
    assert ledger.claimed_before(engine, ids=[rows[0].id], worker="w2", lease_until=NOW + LEASE) == {}
    assert ledger.claimed_before(engine, ids=[rows[1].id], worker="w1", lease_until=NOW + LEASE) == {}
