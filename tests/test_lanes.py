"""How many SMTP conversations a worker process holds (worker/delivery/lanes.py), against a
real relay on loopback that limits its connections, asks us to slow down, or is slow."""

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from tests.support.data import add_subscribers, ledger, load_stories
from worker.delivery import lanes
from worker.delivery.lanes import AUTO_CAP, START, Gauge
from worker.delivery.pipeline import run_inline
from worker.delivery.plan import get_edition, plan_edition
from worker.delivery.senders import make_sender_pool
from worker.digest import week_window
from worker.store.db import session_scope

KEY = "weekly-2025-W05"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)


@pytest.fixture
def world(engine, smtp_settings, tmp_path):
    load_stories(engine, tmp_path)
    lanes._GAUGES.clear()
    return engine, smtp_settings


def _send(engine, settings, readers: int):
    add_subscribers(engine, readers)
    planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW)
    pool = make_sender_pool(settings)
    try:
        run_inline(engine, settings, planned.edition_id, pool)
    finally:
        pool.close()
    return planned.edition_id


def _attempts(engine) -> set[int]:
    with session_scope(engine) as session:
        return set(session.scalars(sa.text("SELECT attempts FROM deliveries WHERE state = 'sent'")))


def _gauge() -> Gauge:
    (gauge,) = lanes._GAUGES.values()
    return gauge


@pytest.mark.parametrize("connections", ["auto", 4])
def test_a_relay_that_takes_two_connections_gets_two_and_every_reader_one_message(world, smtp_server, connections):
    """The lanes beyond the relay's limit are refused at the greeting: they end without
    claiming a row, the ceiling stays at two for the edition, and nobody's message is
    delayed, failed or sent twice."""
    engine, settings = world
    settings = settings.model_copy(update={"smtp_connections": connections})
    smtp_server.plan.max_connections = 2
    smtp_server.plan.delay = 0.005  # lanes overlap: the relay sees them at once
    edition_id = _send(engine, settings, 60)
    states = ledger(engine, KEY)
    assert get_edition(engine, edition_id).state == "done", states
    sent = {email for email, (state, _) in states.items() if state == "sent"}
    assert {state for state, _ in states.values()} == {"sent", "skipped"}
    assert sent == set(smtp_server.by_recipient()) and max(smtp_server.by_recipient().values()) == 1
    assert _attempts(engine) == {1}, "a refused conversation cost no reader an attempt"
    assert smtp_server.most_open <= 2 and smtp_server.crowded >= 1
    gauge = _gauge()
    assert gauge.ceiling == gauge.lanes <= 2
    assert gauge.reason.startswith("the relay refused a conversation beyond ")
    assert "421 4.7.0 too many connections from your address" in gauge.reason


def test_a_relay_refusing_every_conversation_costs_one_attempt_and_leaves_the_ceiling(world, smtp_server):
    """Refused beside lanes that are only connecting, a lane cannot tell a full relay from a
    down one: it ends without a claim, and the last lane's refusal is the row's result, as
    with one lane. The ceiling stays: a relay that was down is not a relay that is full."""
    engine, settings = world
    smtp_server.plan.greeting = "421 4.3.2 try later"
    _send(engine, settings, 24)
    states = ledger(engine, KEY)
    assert sorted(state for state, _ in states.values() if state != "skipped")[-1:] == ["pending"]
    assert sum(1 for state, _ in states.values() if state == "failed") == 1
    assert smtp_server.received == []
    assert _gauge().ceiling == AUTO_CAP


def test_lanes_grow_while_the_relay_keeps_them_waiting_and_stay_under_the_cap(world, smtp_server):
    """A relay that takes 40 ms per message: the lanes leave the CPU idle, so there come
    more of them, never more than the cap."""
    engine, settings = world
    smtp_server.plan.delay = 0.04
    edition_id = _send(engine, settings, 400)
    assert get_edition(engine, edition_id).state == "done"
    assert max(smtp_server.by_recipient().values()) == 1
    assert START < smtp_server.most_open <= AUTO_CAP
    assert _gauge().lanes > START


def test_a_relay_asking_to_slow_down_halves_the_lanes(world, smtp_server):
    """421 4.7.0 at RCPT after the first messages: each such reply halves the lanes, down to
    one, which stays the ceiling; the rows refused wait for their retry, nothing is lost."""
    engine, settings = world
    settings = settings.model_copy(update={"smtp_connections": 8, "error_budget": 50})
    smtp_server.plan.delay = 0.005
    smtp_server.plan.throttle_after = 10
    _send(engine, settings, 60)
    gauge = _gauge()
    assert gauge.lanes == gauge.ceiling == 1
    assert gauge.reason == "the relay asked to slow down: 421 4.7.0 too many messages, slow down"
    states = ledger(engine, KEY)
    assert {state for state, _ in states.values()} <= {"sent", "skipped", "failed", "pending"}
    assert max(smtp_server.by_recipient().values()) == 1


class _Clock:
    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def spend(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu


def _gauge_with(settings, clock: _Clock) -> Gauge:
    gauge = Gauge(settings, clock=lambda: clock.wall, cpu=lambda: clock.cpu)
    gauge.start()
    return gauge


def _window(gauge: Gauge, clock: _Clock, transactions: list[float], cpu: float) -> int:
    """Messages one after another, each with its SMTP transaction and `cpu` of work."""
    for seconds in transactions:
        clock.spend(seconds + cpu, cpu)
        lanes = gauge.observe(seconds)
    return lanes


@pytest.mark.parametrize("relay, cpu, lanes", [
    (0.0003, 0.001, START),   # a relay on the same network: the CPU is the limit
    (0.005, 0.001, 9),        # 1.5 x (1 + 5)
    (0.020, 0.001, AUTO_CAP),  # 1.5 x 21, over the cap
    (0.020, 0.010, 5),        # the first batches, rendering: slow work asks for few lanes
])
def test_the_gauge_sets_the_lanes_from_the_relays_time_and_the_work(settings, relay, cpu, lanes):
    clock = _Clock()
    gauge = _gauge_with(settings, clock)
    assert _window(gauge, clock, [relay] * 200, cpu) == lanes


def test_the_estimate_only_raises_the_lanes(settings):
    """A lane that ends closes its conversation and a new one opens another: lanes that
    followed each window down and up again would spend their time on round trips."""
    clock = _Clock()
    gauge = _gauge_with(settings, clock)
    assert _window(gauge, clock, [0.005] * 200, 0.001) == 9
    assert _window(gauge, clock, [0.0003] * 200, 0.001) == 9


def test_the_relays_time_is_a_low_percentile_not_the_lanes_queueing(settings):
    """Lanes queueing for the GIL or a core make most transactions slow: the fastest tenth
    is the relay's own time, and it asks for no more lanes."""
    clock = _Clock()
    gauge = _gauge_with(settings, clock)
    assert _window(gauge, clock, ([0.0003] + [0.030] * 4) * 40, 0.001) == START


def test_a_short_stretch_decides_nothing_and_a_fixed_number_never_changes(settings):
    clock = _Clock()
    gauge = _gauge_with(settings, clock)
    assert _window(gauge, clock, [0.02] * 15, 0.001) == START, "too few transactions to judge"
    fixed = _gauge_with(settings.model_copy(update={"smtp_connections": 6}), clock)
    assert _window(fixed, clock, [0.02] * 100, 0.001) == 6


def test_the_relay_lowers_a_fixed_number_too(settings):
    gauge = _gauge_with(settings.model_copy(update={"smtp_connections": 6}), _Clock())
    assert gauge.crowded(3, "421 too many") == 3
    assert gauge.slow_down("421 slow down") == 1
    assert (gauge.lanes, gauge.ceiling) == (1, 1)


def test_after_a_refusal_the_gauge_grows_no_higher_than_the_ceiling(settings):
    clock = _Clock()
    gauge = _gauge_with(settings, clock)
    gauge.crowded(5, "421 too many")
    assert _window(gauge, clock, [0.02] * 60, 0.001) == 5
    gauge.crowded(0, "421 too many")
    assert gauge.lanes == gauge.ceiling == 1, "at least one lane always goes on"


@pytest.mark.parametrize("value, expected", [("auto", "auto"), ("AUTO", "auto"), ("12", 12), ("64", 64)])
def test_the_setting_takes_auto_or_a_number(monkeypatch, value, expected):
    from worker.settings import load_settings

    monkeypatch.setenv("NEWSLETTER_SMTP_CONNECTIONS", value)
    assert load_settings().smtp_connections == expected


@pytest.mark.parametrize("value", ["0", "65", "many", "4.5", ""])
def test_the_setting_refuses_anything_else_with_what_it_takes(monkeypatch, value):
    from worker.errors import ConfigError
    from worker.settings import load_settings

    monkeypatch.setenv("NEWSLETTER_SMTP_CONNECTIONS", value)
    with pytest.raises(ConfigError, match="must be auto or a whole number from 1 to 64"):
        load_settings()


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_worker_killed_with_many_lanes_leaves_at_most_two_rows_a_lane_unknown(
        engine, tmp_path, smtp_server, start_worker, worker_env, run_cli, tick):
    """A real worker at `auto` with a relay 50 ms away and the default batch size: its lanes
    grow past the start, then it is killed mid-send. Each lane in flight may leave its
    transaction and the result it had not written `unknown`; nobody is lost or sent twice,
    and the worker's database connections stayed bounded however many lanes ran."""
    import signal
    import time

    from tests.support.oracle import assert_oracle
    from tests.support.worker import wait_for
    from worker.delivery.plan import find_edition

    load_stories(engine, tmp_path)
    everyone = {email for _, email, _ in add_subscribers(engine, 1500, sets=[("RU", "UA"), ("DE",), ("US", "GB")])}
    smtp_server.plan.delay = 0.05
    env = {**worker_env, "NEWSLETTER_SMTP_CONNECTIONS": "auto", "NEWSLETTER_BATCH_SIZE": "200",
           "NEWSLETTER_LIVENESS_SECONDS": "6"}
    ours = _backends(engine)
    w1 = start_worker("w1", concurrency=1, **env)
    assert run_cli("send", "--week", "2025-W05", env=env).code == 0
    wait_for(lambda: len(smtp_server.live) > 2 * START, timeout=120, interval=0.05, what="the lanes to grow")
    connections = _backends(engine) - ours
    lanes_at_kill = len(smtp_server.live)
    w1.kill(signal.SIGKILL)
    w1.proc.wait(10)
    assert len(smtp_server.received) < len(everyone), "the send ended before the kill; nothing to prove"
    start_worker("w2", concurrency=1, **env)
    deadline = time.monotonic() + 180
    while find_edition(engine, KEY).state != "done" and time.monotonic() < deadline:
        tick(**{k: v for k, v in env.items() if k != "NEWSLETTER_BROKER_URL"})
        time.sleep(1)
    assert smtp_server.most_open <= AUTO_CAP
    assert connections <= 6 + 6, f"{connections} database connections with {lanes_at_kill} lanes"
    assert_oracle(engine, KEY, smtp_server, run_cli, env, expect_sent=everyone, allowed_unknown=2 * AUTO_CAP)
    unknown = sum(1 for state, _ in ledger(engine, KEY).values() if state == "unknown")
    print(f"\nauto lanes: {lanes_at_kill} conversations open at the kill, {smtp_server.most_open} at most; "
          f"{connections} database connections of the worker's; {unknown} rows unknown", flush=True)
    assert unknown <= 2 * smtp_server.most_open


def _backends(engine) -> int:
    """Connections to this test's database, but the one asking."""
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                    "AND pid <> pg_backend_pid()")).scalar()
