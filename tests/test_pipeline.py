"""Planning and delivering an edition in-process, through a real SMTP server, on both databases."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from tests.support.data import add_subscribers, delivery_rows, ledger, load_stories
from worker.delivery.pipeline import deliver_batch, run_inline
from worker.delivery.plan import get_edition, plan_edition
from worker.delivery.smtp import SmtpSender
from worker.delivery.status import edition_status
from worker.digest import week_window
from worker.readers.subscribers import set_status
from worker.store.db import session_scope
from worker.store.models import Subscriber, SubscriberEvent, SubscriberStatus

KEY = "weekly-2025-W05"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)


def _plan(engine, settings, key=KEY):
    return plan_edition(engine, key=key, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW)


@pytest.fixture
def world(engine, smtp_settings, tmp_path):
    load_stories(engine, tmp_path)
    subscribers = add_subscribers(engine, 24)
    return engine, smtp_settings, subscribers


def _run(engine, settings, edition_id):
    sender = SmtpSender(settings)
    try:
        return run_inline(engine, settings, edition_id, sender)
    finally:
        sender.close()


def test_planning_is_in_bulk_idempotent_and_skips_sets_without_stories(world):
    engine, settings, subscribers = world
    first = _plan(engine, settings)
    again = _plan(engine, settings)
    assert first.created and not again.created and first.edition_id == again.edition_id
    states = ledger(engine, KEY)
    assert len(states) == 24
    jp = {email for _, email, regions in subscribers if regions == "JP"}
    assert {e for e, s in states.items() if s == ("skipped", "no-stories")} == jp
    assert get_edition(engine, first.edition_id).total == 24


def test_every_subscriber_with_stories_gets_exactly_one_message_with_their_sections(world, smtp_server):
    engine, settings, subscribers = world
    planned = _plan(engine, settings)
    _run(engine, settings, planned.edition_id)
    got = smtp_server.by_recipient()
    for _, email, regions in subscribers:
        if regions == "JP":
            assert got[email] == 0
            continue
        assert got[email] == 1
        message = next(r.message for r in smtp_server.received if r.rcpt == email)
        text = message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        from worker.regions import region_name

        headings = [region_name(code) for code in regions.split()]
        positions = [text.index(f"\n{h}\n") for h in headings]
        assert positions == sorted(positions)  # sections in the subscriber's order
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    status = edition_status(engine, get_edition(engine, planned.edition_id))
    assert status.state == "done"
    assert status.counts["sent"] == len(smtp_server.received) == 21
    assert status.smtp_codes == {"sent 250": 21}


def test_a_second_run_of_the_same_batch_sends_nothing(world, smtp_server):
    engine, settings, _ = world
    planned = _plan(engine, settings)
    with session_scope(engine) as session:
        ids = list(session.scalars(sa.text(f"SELECT id FROM deliveries WHERE edition_id = {planned.edition_id}")))
    sender = SmtpSender(settings)
    deliver_batch(engine, settings, edition_id=planned.edition_id, delivery_ids=ids, sender=sender, worker="a")
    sent = len(smtp_server.received)
    report = deliver_batch(engine, settings, edition_id=planned.edition_id, delivery_ids=ids, sender=sender,
                           worker="b")
    sender.close()
    assert len(smtp_server.received) == sent == 21 and sum(report.outcomes.values()) == 0


def test_temporary_failures_retry_then_end_failed_with_the_last_reply(world, smtp_server):
    engine, settings, subscribers = world
    settings = settings.model_copy(update={"max_attempts": 3})
    victim = subscribers[0][1]
    flaky = subscribers[1][1]
    smtp_server.plan.rcpt[victim] = "451 4.7.1 greylisted, try later"
    smtp_server.plan.flaky[flaky] = 2  # refused twice, then accepted
    planned = _plan(engine, settings)
    for _ in range(4):
        _run(engine, settings, planned.edition_id)
    rows = delivery_rows(engine, KEY)
    assert (rows[victim].state, rows[victim].attempts, rows[victim].next_attempt_at) == ("failed", 3, None)
    assert (rows[victim].last_code, rows[victim].last_reply) == (451, "451 4.7.1 greylisted, try later")
    assert (rows[flaky].state, rows[flaky].attempts) == ("sent", 3)
    assert smtp_server.count_for(victim) == 0 and smtp_server.count_for(flaky) == 1


def test_a_mailbox_refusal_bounces_and_suppresses_the_subscriber(world, smtp_server):
    engine, settings, subscribers = world
    victim = subscribers[2][1]
    smtp_server.plan.rcpt[victim] = "550 5.1.1 no such user"
    planned = _plan(engine, settings)
    _run(engine, settings, planned.edition_id)
    assert ledger(engine, KEY)[victim] == ("bounced", None)
    with session_scope(engine) as session:
        assert session.scalar(sa.select(Subscriber.status).where(Subscriber.email == victim)) == "bounced"
        history = session.execute(sa.select(SubscriberEvent.kind, SubscriberEvent.via, SubscriberEvent.note)
                                  .join(Subscriber).where(Subscriber.email == victim)).all()
    assert history == [("bounced", "refused-at-send", "refused at send 550 5.1.1")]
    assert len(smtp_server.received) == 20


@pytest.mark.parametrize(("fault", "reason"), [
    ("auth", "authentication failed"),
    ("data", "554 5.7.1 refused as spam"),
    ("mail", "553 5.7.1 sender not allowed"),
])
def test_sender_side_refusals_pause_the_edition_and_blame_nobody(world, smtp_server, fault, reason):
    engine, settings, subscribers = world
    if fault == "auth":
        smtp_server.stop()
        from tests.support.smtp import SmtpServer

        auth_server = SmtpServer(auth={"digest": "right"}).start()
        settings = settings.model_copy(update={"smtp_port": auth_server.port, "smtp_username": "digest",
                                               "smtp_password": SecretStr("wrong"), "smtp_allow_plain_auth": True})
    elif fault == "data":
        smtp_server.plan.data_all = "554 5.7.1 refused as spam"
    else:
        smtp_server.plan.mail = "553 5.7.1 sender not allowed"
    planned = _plan(engine, settings)
    _run(engine, settings, planned.edition_id)
    edition = get_edition(engine, planned.edition_id)
    assert edition.state == "paused" and reason in edition.reason
    states = ledger(engine, KEY)
    assert {s for s, _ in states.values()} == {"pending", "skipped"}
    with session_scope(engine) as session:
        assert set(session.scalars(sa.select(Subscriber.status))) == {"active"}
        assert set(session.scalars(sa.text("SELECT attempts FROM deliveries"))) == {0}
    if fault == "auth":
        auth_server.stop()


def test_connection_dropped_after_the_final_dot_is_unknown_and_not_resent(world, smtp_server):
    engine, settings, subscribers = world
    victim = subscribers[3][1]
    smtp_server.plan.data[victim] = "drop"
    planned = _plan(engine, settings)
    for _ in range(2):
        _run(engine, settings, planned.edition_id)
    assert ledger(engine, KEY)[victim] == ("unknown", None)
    assert len(smtp_server.dropped) == 1 and smtp_server.count_for(victim) == 0
    status = edition_status(engine, get_edition(engine, planned.edition_id))
    assert status.counts["unknown"] == 1
    assert status.unknown[0].email == victim
    assert status.unknown[0].reason.startswith("no reply after end of data")
    assert status.state == "done"


def test_a_refused_connection_stops_the_batch_and_leaves_the_rest_pending(world):
    engine, settings, _ = world
    settings = settings.model_copy(update={"smtp_port": 1})
    planned = _plan(engine, settings)
    reports = _run(engine, settings, planned.edition_id)
    assert reports[0].stopped.startswith("connection failed")
    states = [s for s, _ in ledger(engine, KEY).values()]
    assert states.count("failed") == 1 and states.count("pending") == 20


def test_an_unsubscribe_during_the_send_takes_effect(world, smtp_server):
    engine, settings, subscribers = world
    leaver = subscribers[5][1]
    planned = _plan(engine, settings)
    set_status(engine, leaver, SubscriberStatus.UNSUBSCRIBED)
    _run(engine, settings, planned.edition_id)
    assert smtp_server.count_for(leaver) == 0
    assert ledger(engine, KEY)[leaver] == ("skipped", "unsubscribed")


def test_a_paused_edition_hands_out_nothing_and_resume_continues_without_duplicates(world, smtp_server):
    from worker.delivery.plan import pause_edition, resume_edition

    engine, settings, _ = world
    settings = settings.model_copy(update={"batch_size": 5})
    planned = _plan(engine, settings)
    with session_scope(engine) as session:
        ids = list(session.scalars(sa.text(
            f"SELECT id FROM deliveries WHERE edition_id = {planned.edition_id} AND state = 'pending' ORDER BY id")))
    sender = SmtpSender(settings)
    deliver_batch(engine, settings, edition_id=planned.edition_id, delivery_ids=ids[:5], sender=sender)
    assert pause_edition(engine, planned.edition_id, "paused by operator")
    report = deliver_batch(engine, settings, edition_id=planned.edition_id, delivery_ids=ids[5:], sender=sender)
    sender.close()
    assert report.stopped == "edition is paused" and len(smtp_server.received) == 5
    assert resume_edition(engine, planned.edition_id)
    _run(engine, settings, planned.edition_id)
    assert len(smtp_server.received) == 21 and max(smtp_server.by_recipient().values()) == 1


@pytest.mark.parametrize("lanes", [1, 4])
def test_a_digest_that_cannot_fit_under_the_clip_pauses_the_edition_and_sends_nothing(world, smtp_server, lanes):
    """Nothing is sent clipped: the edition pauses with the reason before any claim, the
    render's claim is given up (no lane waits out a render that is not coming), and after
    the operator's fix `resume` sends everything once."""
    from worker.delivery import pipeline
    from worker.delivery.plan import resume_edition
    from worker.delivery.senders import make_sender_pool

    engine, settings, _ = world
    fixed = settings.model_copy(update={"smtp_connections": lanes})
    broken = fixed.model_copy(update={"postal_address": "x" * 120_000})
    planned = _plan(engine, broken)
    sender = make_sender_pool(broken)
    try:
        run_inline(engine, broken, planned.edition_id, sender)
    finally:
        sender.close()
    edition = get_edition(engine, planned.edition_id)
    assert edition.state == "paused"
    assert edition.reason.startswith(f"paused: {KEY} ")
    assert "even its shortest form is over 96 KB of HTML; shorten NEWSLETTER_POSTAL_ADDRESS" in edition.reason
    assert smtp_server.received == []
    assert {s for s, _ in ledger(engine, KEY).values()} == {"pending", "skipped"}
    with session_scope(engine) as session:
        assert session.scalar(sa.text("SELECT count(*) FROM variants WHERE html IS NULL")) == 0
        assert set(session.scalars(sa.text("SELECT attempts FROM deliveries"))) == {0}
    assert resume_edition(engine, planned.edition_id)
    # The operator's fix reaches the workers by a restart; this process forgets its renderer.
    pipeline._RENDERERS.clear()
    sender = make_sender_pool(fixed)
    try:
        run_inline(engine, fixed, planned.edition_id, sender)
    finally:
        sender.close()
    assert get_edition(engine, planned.edition_id).state == "done"
    assert len(smtp_server.received) == 21 and max(smtp_server.by_recipient().values()) == 1


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_database_outage_mid_batch_is_a_pause_of_the_lanes_not_a_failed_batch(world, smtp_server, db_url):
    """Every connection cut and refused for three seconds while four lanes send: the lanes
    wait, then go on where they were. No lane fails, nothing stays `sending` to end
    `unknown` (the results the relay gave during the outage are written when it ends), and
    everyone gets exactly one message."""
    import threading
    import time

    from tests.support.proxy import CuttableProxy
    from worker.delivery.senders import make_sender_pool
    from worker.store.db import create_db_engine

    engine, settings, subscribers = world
    settings = settings.model_copy(update={"smtp_connections": 4})
    planned = _plan(engine, settings)
    smtp_server.plan.delay = 0.1
    url = sa.make_url(db_url)
    proxy = CuttableProxy(url.port or 5432)
    far = create_db_engine(url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False))
    with session_scope(engine) as session:
        ids = list(session.scalars(sa.text(
            f"SELECT id FROM deliveries WHERE edition_id = {planned.edition_id} AND state = 'pending' ORDER BY id")))
    sender = make_sender_pool(settings)
    outcome = {}

    def batch():
        try:
            outcome["report"] = deliver_batch(far, settings, edition_id=planned.edition_id, delivery_ids=ids,
                                              sender=sender)
        except Exception as exc:  # noqa: BLE001 - the assertion below says what it was
            outcome["error"] = exc

    thread = threading.Thread(target=batch)
    try:
        thread.start()
        deadline = time.monotonic() + 30
        while len(smtp_server.received) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        proxy.cut(3)
        thread.join(60)
    finally:
        proxy.close()
        sender.close()
        far.dispose()
    assert "error" not in outcome, outcome
    report = outcome["report"]
    assert report.stopped is None and report.outcomes["sent"] == len(ids) == 21
    states = ledger(engine, KEY)
    assert {e for e, s in states.items() if s[0] == "sent"} == set(smtp_server.by_recipient())
    assert {s for s, _ in states.values()} == {"sent", "skipped"}
    assert max(smtp_server.by_recipient().values()) == 1


@pytest.mark.parametrize("lanes", [1, 4])
def test_the_error_budget_is_per_lane_and_a_run_of_temporary_failures_waits_for_a_probe(world, smtp_server, lanes):
    """Four lanes failing together use the budget up no sooner than one lane does: the
    edition pauses after budget x lanes failures in a row, with a time to probe the relay."""
    from worker.delivery.senders import make_sender_pool

    engine, settings, _ = world
    settings = settings.model_copy(update={"smtp_connections": lanes, "error_budget": 3})
    smtp_server.plan.data_all = "451 4.3.0 relay overloaded"
    planned = _plan(engine, settings)
    sender = make_sender_pool(settings)
    try:
        run_inline(engine, settings, planned.edition_id, sender, clock=lambda: NOW)
    finally:
        sender.close()
    edition = get_edition(engine, planned.edition_id)
    assert edition.state == "paused"
    per_lane = "; 3 per lane" if lanes > 1 else ""
    assert edition.reason == (f"paused: {3 * lanes} failures in a row (NEWSLETTER_ERROR_BUDGET{per_lane}), "
                              "last: 451 4.3.0 relay overloaded")
    assert edition.resume_at == NOW + timedelta(seconds=settings.relay_probe_seconds)
    assert {s for s, _ in ledger(engine, KEY).values()} >= {"failed"}
    assert sum(1 for s, _ in ledger(engine, KEY).values() if s == "failed") >= 3 * lanes


def test_a_batch_is_marked_handed_out_before_the_broker_sees_it(world):
    """A worker may take a batch the moment it is published: its rows are marked first, so
    the mark never races the worker's lease (on PostgreSQL the lease skips rows the mark's
    update holds, took nothing and left them marked for NEWSLETTER_REDISPATCH_SECONDS)."""
    from worker.delivery import ledger
    from worker.delivery.schedule import dispatch

    engine, settings, _ = world
    planned = _plan(engine, settings)
    taken: list[int] = []
    published: list[int] = []

    def publish(edition_id, ids):
        published.extend(ids)
        with engine.connect() as conn:  # what a worker sees when the message arrives
            marked = conn.execute(sa.text("SELECT count(*) FROM deliveries WHERE id IN :ids AND enqueued_at IS NOT NULL")
                                  .bindparams(sa.bindparam("ids", expanding=True)), {"ids": list(ids)}).scalar()
        assert marked == len(ids)
        taken.extend(r.id for r in ledger.lease_batch(engine, edition_id=edition_id, ids=ids, worker="w:1", now=NOW,
                                                     lease=settings.batch_lease, token="t"))

    batches = dispatch(engine, settings, planned.edition_id, publish, NOW)
    assert batches and published and sorted(taken) == sorted(published)


def test_a_batch_the_broker_refuses_stays_ready_for_the_next_dispatch(world):
    from worker.delivery.schedule import dispatch

    engine, settings, _ = world
    planned = _plan(engine, settings)

    def down(edition_id, ids):
        raise ConnectionRefusedError("broker down")

    with pytest.raises(ConnectionRefusedError):
        dispatch(engine, settings, planned.edition_id, down, NOW)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries WHERE enqueued_at IS NOT NULL")).scalar() == 0
    published = []
    assert dispatch(engine, settings, planned.edition_id, lambda e, ids: published.append(ids), NOW) == len(published) > 0

