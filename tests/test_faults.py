"""Killed workers, duplicate and lost broker messages, a restarted Redis, an error budget:
every test ends with the oracle."""

import signal
import subprocess
import time

import pytest

from tests.support.data import add_subscribers, load_stories
from tests.support.oracle import assert_oracle
from tests.support.worker import wait_for
from worker.delivery.plan import find_edition

KEY = "weekly-2025-W05"
pytestmark = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

# Short leases so recovery happens within seconds; slow SMTP so a batch is caught mid-way.
FAST = {"NEWSLETTER_BATCH_LEASE_SECONDS": "20", "NEWSLETTER_SEND_LEASE_SECONDS": "3",
        "NEWSLETTER_REDISPATCH_SECONDS": "1", "NEWSLETTER_BATCH_SIZE": "10", "NEWSLETTER_SMTP_CONNECTIONS": "2"}
# A killed worker process can leave, per lane, the transaction in flight and the
# previous result not yet written (it is written with the next claim): both `unknown`.
IN_FLIGHT = 2 * int(FAST["NEWSLETTER_SMTP_CONNECTIONS"])


def _setup(engine, tmp_path, count=40):
    load_stories(engine, tmp_path)
    return add_subscribers(engine, count, sets=[("RU", "UA"), ("DE",), ("US", "GB")])


def _finish(engine, tick, timeout=90, **env):
    def done():
        tick(**{**FAST, **env})
        return find_edition(engine, KEY).state == "done"

    wait_for(done, timeout=timeout, interval=1.0, what="the edition to finish")


def test_sigkill_mid_batch_loses_nothing_and_resends_nothing(engine, tmp_path, smtp_server, start_worker,
                                                             worker_env, run_cli, tick):
    _setup(engine, tmp_path)
    smtp_server.plan.delay = 0.15
    env = {**worker_env, **FAST}
    worker = start_worker("w1", concurrency=1, **FAST)
    assert run_cli("send", "--week", "2025-W05", env=env).code == 0
    wait_for(lambda: len(smtp_server.received) >= 5, what="5 messages")
    worker.kill(signal.SIGKILL)
    worker.proc.wait(10)
    k = len(smtp_server.received)
    assert 5 <= k < 40
    start_worker("w2", concurrency=1, **FAST)
    _finish(engine, tick)
    rows, status = assert_oracle(engine, KEY, smtp_server, run_cli, env, allowed_unknown=IN_FLIGHT)
    assert status["counts"]["sent"] + status["counts"]["unknown"] == 40
    # Unknown rows are those in flight at the kill; every other subscriber got the message.
    assert len(smtp_server.received) >= 40 - IN_FLIGHT


def test_sigterm_finishes_the_batch_then_the_rest_completes_after_restart(engine, tmp_path, smtp_server,
                                                                          start_worker, worker_env, run_cli, tick):
    _setup(engine, tmp_path)
    smtp_server.plan.delay = 0.1
    env = {**worker_env, **FAST}
    worker = start_worker("w1", concurrency=1, **FAST)
    assert run_cli("send", "--week", "2025-W05", env=env).code == 0
    wait_for(lambda: len(smtp_server.received) >= 3, what="3 messages")
    worker.proc.send_signal(signal.SIGTERM)  # warm shutdown of the main process
    worker.proc.wait(30)
    assert "Warm shutdown" in worker.output() or "warm shutdown" in worker.output().lower()
    assert len(smtp_server.received) % 10 == 0  # the batches in hand were finished, not cut
    start_worker("w2", concurrency=1, **FAST)
    _finish(engine, tick)
    assert_oracle(engine, KEY, smtp_server, run_cli, env, allowed_unknown=0, expect_sent=40)


def test_the_same_batch_published_twice_sends_once(engine, tmp_path, smtp_server, start_worker, worker_env,
                                                   run_cli, tick):
    from worker.celery_app import create_app
    from worker.settings import load_settings
    from worker.tasks import publisher

    _setup(engine, tmp_path, count=20)
    env = {**worker_env, **FAST, "NEWSLETTER_BATCH_SIZE": "50"}
    start_worker("w1", concurrency=2, **FAST)
    assert run_cli("send", "--week", "2025-W05", "--wait", env=env).code == 0
    edition = find_edition(engine, KEY)
    import sqlalchemy as sa

    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sa.text(f"SELECT id FROM deliveries WHERE edition_id={edition.id}"))]
    publish = publisher(create_app(load_settings(env)))
    publish(edition.id, ids)
    publish(edition.id, ids)
    time.sleep(2)
    assert_oracle(engine, KEY, smtp_server, run_cli, env, expect_sent=20)


def test_a_task_outliving_the_visibility_timeout_is_sent_once(engine, tmp_path, smtp_server, start_worker,
                                                              worker_env, run_cli, tick):
    _setup(engine, tmp_path, count=20)
    smtp_server.plan.delay = 0.4  # a batch of 10 takes ~4 s, the broker gives up on it after 1 s
    slow = {**FAST, "NEWSLETTER_BROKER_VISIBILITY_TIMEOUT": "1", "NEWSLETTER_BATCH_LEASE_SECONDS": "30"}
    env = {**worker_env, **slow}
    w1 = start_worker("w1", concurrency=1, **slow)
    w2 = start_worker("w2", concurrency=1, **slow)
    assert run_cli("send", "--week", "2025-W05", env=env).code == 0
    _finish(engine, tick, **slow)
    assert_oracle(engine, KEY, smtp_server, run_cli, env, expect_sent=20)
    import re

    received = re.findall(r"Task worker\.tasks\.send_batch\[([0-9a-f-]+)\] received", w1.output() + w2.output())
    assert len(received) > len(set(received))  # the broker did hand a running task out again


def test_redis_restarted_empty_mid_edition(engine, tmp_path, smtp_server, start_worker, worker_env, run_cli,
                                           tick):
    from tests.support.smtp import _free_port

    port = _free_port()

    def redis_server():
        return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no"], stdout=subprocess.DEVNULL)

    server = redis_server()
    try:
        broker = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True).stdout
                 .strip() == b"PONG", what="redis")
        _setup(engine, tmp_path)
        smtp_server.plan.delay = 0.1
        env = {**worker_env, **FAST, "NEWSLETTER_BROKER_URL": broker}
        start_worker("w1", concurrency=1, **FAST, NEWSLETTER_BROKER_URL=broker)
        assert run_cli("send", "--week", "2025-W05", env=env).code == 0
        wait_for(lambda: len(smtp_server.received) >= 5, what="5 messages")
        server.kill()
        server.wait(10)
        server = redis_server()  # empty: every queued batch is gone
        time.sleep(1)
        _finish(engine, tick, NEWSLETTER_BROKER_URL=broker, timeout=120)
        assert_oracle(engine, KEY, smtp_server, run_cli, env, allowed_unknown=0)
    finally:
        server.kill()


def test_twenty_failures_in_a_row_pause_and_resume_continues(engine, tmp_path, smtp_server, start_worker,
                                                            worker_env, run_cli, tick):
    _setup(engine, tmp_path, count=30)
    smtp_server.plan.data_all = "451 4.3.0 relay overloaded"
    env = {**worker_env, **FAST, "NEWSLETTER_ERROR_BUDGET": "20", "NEWSLETTER_BATCH_SIZE": "30"}
    start_worker("w1", concurrency=1, **{**FAST, "NEWSLETTER_ERROR_BUDGET": "20", "NEWSLETTER_BATCH_SIZE": "30"})
    assert run_cli("send", "--week", "2025-W05", env=env).code == 0
    wait_for(lambda: find_edition(engine, KEY).state == "paused", what="the pause")
    edition = find_edition(engine, KEY)
    assert edition.reason == ("paused: 20 failures in a row (NEWSLETTER_ERROR_BUDGET), "
                              "last: 451 4.3.0 relay overloaded")
    smtp_server.plan.data_all = None
    assert run_cli("resume", KEY, "--wait", env=env).code == 0
    _finish(engine, tick)
    assert_oracle(engine, KEY, smtp_server, run_cli, env, expect_sent=30)


def test_the_database_unreachable_mid_batch_sends_nothing_unclaimed(engine, db_url, tmp_path, smtp_server,
                                                                     start_worker, worker_env, run_cli, tick):
    import sqlalchemy as sa

    from tests.support.proxy import CuttableProxy

    _setup(engine, tmp_path)
    smtp_server.plan.delay = 0.1
    url = sa.make_url(db_url)
    proxy = CuttableProxy(url.port or 5432)
    via_proxy = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    env = {**worker_env, **FAST}
    try:
        start_worker("w1", concurrency=1, **FAST, NEWSLETTER_DATABASE_URL=via_proxy)
        assert run_cli("send", "--week", "2025-W05", env=env).code == 0
        wait_for(lambda: len(smtp_server.received) >= 5, what="5 messages")
        proxy.cut(4)
        at_cut = len(smtp_server.received)
        time.sleep(4)
        # While the database was away at most the transactions in flight (one per lane) could finish.
        assert len(smtp_server.received) <= at_cut + int(FAST["NEWSLETTER_SMTP_CONNECTIONS"])
        _finish(engine, tick, timeout=120)
    finally:
        proxy.close()
    rows, status = assert_oracle(engine, KEY, smtp_server, run_cli, env, allowed_unknown=IN_FLIGHT)
    assert status["counts"]["sent"] + status["counts"]["unknown"] == 40


def test_beat_down_across_the_slot_then_back_in_time_sends_once_and_too_late_skips(
        engine, tmp_path, smtp_server, start_worker, worker_env, run_cli):
    from datetime import UTC, datetime, timedelta

    from worker.celery_app import create_app
    from worker.delivery.schedule import reconcile
    from worker.settings import load_settings
    from worker.tasks import publisher

    _setup(engine, tmp_path, count=20)
    env = {**worker_env, **FAST}
    settings = load_settings(env)
    publish = publisher(create_app(settings))
    start_worker("w1", concurrency=2, **FAST)
    slot = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)  # UTC zone: Monday 07:00
    # Beat was down at 07:00 and comes back 23 h later: the reconciler plans and sends.
    first = reconcile(engine, settings, publish, slot + timedelta(hours=23))
    assert first.due.action == "planned"
    wait_for(lambda: len(smtp_server.received) == 20, what="20 messages")
    again = reconcile(engine, settings, publish, slot + timedelta(hours=23, minutes=1))
    assert again.due.action == "exists"
    time.sleep(1)
    assert_oracle(engine, KEY, smtp_server, run_cli, env, expect_sent=20)
    # The next Monday it stays down for 25 h: that week is skipped, on record, and nothing goes out.
    late = reconcile(engine, settings, publish, slot + timedelta(days=7, hours=25))
    assert (late.due.action, late.due.key) == ("skipped", "weekly-2025-W06")
    assert find_edition(engine, "weekly-2025-W06").reason.startswith(
        "missed: the weekly send was due 2025-02-10T07:00:00+00:00")
    time.sleep(1)
    assert len(smtp_server.received) == 20


def test_a_throttling_relay_slows_the_shared_rate_and_everything_goes_once(
        engine, tmp_path, smtp_server, start_worker, worker_env, run_cli, tick, redis_url):
    import redis

    _setup(engine, tmp_path, count=60)
    rate = 20
    smtp_server.plan.throttle_after = 12  # the relay takes 12 messages per 2 s: 6/s
    smtp_server.plan.throttle_window = 2.0
    smtp_server.plan.throttle_reply = "421 4.7.0 too many messages, slow down"
    limits = {**FAST, "NEWSLETTER_SEND_RATE": str(rate), "NEWSLETTER_BATCH_SIZE": "15"}
    env = {**worker_env, **limits}
    start_worker("w1", concurrency=1, **limits)
    start_worker("w2", concurrency=1, **limits)
    lowest = []
    client = redis.Redis.from_url(redis_url)

    def sample():
        value = client.hget("newsletter:send-rate", "rate")
        if value is not None:
            lowest.append(float(value))
        return False

    assert run_cli("send", "--week", "2025-W05", env=env).code == 0
    wait_for(lambda: smtp_server.throttled > 0, what="the first throttle reply")
    for _ in range(10):
        sample()
        time.sleep(0.2)
    _finish(engine, tick, timeout=180, **limits)
    assert_oracle(engine, KEY, smtp_server, run_cli, env, expect_sent=60)
    assert min(lowest) < rate / 2  # the shared rate backed off
    times = sorted(r.at for r in smtp_server.received)
    worst = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert worst <= rate + 1


def test_a_poison_recipient_is_capped_and_everyone_else_is_delivered(engine, tmp_path, smtp_server,
                                                                    start_worker, worker_env, run_cli, tick):
    subscribers = _setup(engine, tmp_path, count=30)
    poison = subscribers[4][1]
    # A tarpit: it answers RCPT with '451-' continuation lines forever. Before the reply
    # deadline existed this held the worker until Celery's hard time limit killed it,
    # and the redelivered batch hit the same recipient again.
    smtp_server.plan.rcpt[poison] = "tarpit"
    limits = {**FAST, "NEWSLETTER_SMTP_TIMEOUT": "1", "NEWSLETTER_MAX_ATTEMPTS": "3"}
    env = {**worker_env, **limits}
    worker = start_worker("w1", concurrency=2, **limits)
    assert run_cli("send", "--week", "2025-W05", env=env).code == 0
    _finish(engine, tick, timeout=120, **limits)
    rows, status = assert_oracle(engine, KEY, smtp_server, run_cli, env, expect_sent=29)
    row = rows[poison]
    assert (row.state, row.attempts, row.next_attempt_at) == ("failed", 3, None)
    assert "reply not complete within 1 s" in row.last_reply
    assert "WorkerLostError" not in worker.output() and "Hard time limit" not in worker.output()
