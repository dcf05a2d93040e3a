"""`newsletter health worker|beat`: fresh and stale, with the clock controlled; and beat says
it is alive only once the broker took its message."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

import pytest
import time_machine

from worker.celery_app import Scheduler, create_app
from worker.delivery.liveness import heartbeat
from worker.health import beat_alive_path, check_beat, check_worker

T = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
HOST = socket.gethostname()


def _touched_at(path, when: datetime) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (when.timestamp(), when.timestamp()))


def test_beat_is_alive_while_its_file_is_fresh(tmp_path):
    schedule = tmp_path / "var" / "celerybeat-schedule"
    missing = check_beat(schedule, now=T)
    assert not missing.ok and "handed no task to the broker yet" in missing.message
    _touched_at(beat_alive_path(schedule), T)
    assert check_beat(schedule, now=T + timedelta(seconds=179)).ok
    stale = check_beat(schedule, now=T + timedelta(seconds=181))
    assert not stale.ok and stale.message.startswith("beat last handed a task to the broker 181 s ago")
    assert check_beat(schedule, now=T + timedelta(minutes=9), max_age=timedelta(minutes=10)).ok


def test_health_beat_on_the_command_line(run_cli, tmp_path):
    _touched_at(beat_alive_path(tmp_path / "var" / "celerybeat-schedule"), T)  # the default path, in the cwd
    with time_machine.travel(T + timedelta(seconds=60), tick=False):
        fresh = run_cli("health", "beat")
    assert fresh.code == 0 and fresh.out.startswith("alive: beat handed a task to the broker 60 s ago")
    with time_machine.travel(T + timedelta(minutes=10), tick=False):
        stale = run_cli("health", "beat")
        longer = run_cli("health", "beat", "--max-age", "900")
        elsewhere = run_cli("health", "beat", "--schedule", str(tmp_path / "other" / "schedule"))
    assert stale.code == 1 and stale.err.startswith("not alive: beat last handed a task to the broker 600 s ago")
    assert longer.code == 0
    assert elsewhere.code == 1 and "does not exist" in elsewhere.err


def test_beat_touches_its_file_only_when_the_broker_took_the_message(settings, redis_url, tmp_path):
    schedule = tmp_path / "var" / "celerybeat-schedule"
    app = create_app(settings.model_copy(update={"broker_url": redis_url}))
    scheduler = Scheduler(app=app, schedule_filename=str(schedule))
    try:
        scheduler.apply_async(scheduler.schedule["reconcile"])
        assert beat_alive_path(schedule).exists()
        import redis

        assert redis.Redis.from_url(redis_url).llen("celery") == 1  # the tick is in the queue
    finally:
        scheduler.close()

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    down = tmp_path / "down" / "celerybeat-schedule"
    app = create_app(settings.model_copy(update={"broker_url": f"redis://127.0.0.1:{port}/0"}))
    app.conf.broker_connection_max_retries = 0
    app.conf.broker_transport_options = {**app.conf.broker_transport_options, "max_retries": 0}
    scheduler = Scheduler(app=app, schedule_filename=str(down))
    try:
        with pytest.raises(Exception):  # noqa: B017 - Celery's SchedulingError wraps kombu's
            scheduler.apply_async(scheduler.schedule["reconcile"])
        assert not beat_alive_path(down).exists()
    finally:
        scheduler.close()


def test_a_worker_is_alive_while_a_process_of_this_host_beats(engine):
    limit = timedelta(seconds=30)
    assert not check_worker(engine, host=HOST, now=T, max_age=limit).ok
    heartbeat(engine, "elsewhere:1", T)  # another host's worker proves nothing about this one
    assert "no worker process of" in check_worker(engine, host=HOST, now=T, max_age=limit).message
    heartbeat(engine, f"{HOST}:101", T - timedelta(seconds=20))
    heartbeat(engine, f"{HOST}:102", T - timedelta(seconds=5))
    fresh = check_worker(engine, host=HOST, now=T, max_age=limit)
    assert fresh.ok and fresh.message == f"2 worker processes of {HOST}; the newest heartbeat is 5 s old"
    stale = check_worker(engine, host=HOST, now=T + timedelta(seconds=40), max_age=limit)
    assert not stale.ok and "is 45 s old (more than 30 s)" in stale.message
    # A host name is matched as a name, not as a LIKE pattern.
    assert not check_worker(engine, host="%", now=T, max_age=limit).ok


def test_health_worker_on_the_command_line(run_cli, engine):
    heartbeat(engine, f"{HOST}:7", T)
    with time_machine.travel(T + timedelta(seconds=10), tick=False):
        fresh = run_cli("health", "worker")
    assert fresh.code == 0 and fresh.out.startswith(f"alive: 1 worker process of {HOST}")
    with time_machine.travel(T + timedelta(seconds=31), tick=False):
        stale = run_cli("health", "worker")
        longer = run_cli("health", "worker", "--max-age", "60")
        other = run_cli("health", "worker", "--host", "nowhere")
    assert stale.code == 1 and "the newest heartbeat of" in stale.err
    assert longer.code == 0
    assert other.code == 1 and "no worker process of nowhere" in other.err


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # beat never opens the database
def test_a_real_beat_becomes_healthy_once_its_first_tick_reached_the_broker(tmp_path, worker_env, redis_url, run_cli):
    """`celery -A worker beat` as compose runs it: unhealthy (no mark) until the reconcile
    tick, a minute after start, is in Redis; then healthy."""
    import subprocess
    import sys
    import time

    import redis

    from tests.conftest import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(worker_env, PYTHONPATH=str(REPO))
    schedule = tmp_path / "var" / "celerybeat-schedule"
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO", "--schedule",
                             str(schedule)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        before = run_cli("health", "beat", "--schedule", str(schedule))
        assert before.code == 1 and "handed no task to the broker yet" in before.err
        deadline = time.monotonic() + 100
        while not beat_alive_path(schedule).exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        after = run_cli("health", "beat", "--schedule", str(schedule))
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode(errors="replace")
    assert after.code == 0, out[-3000:]
    assert redis.Redis.from_url(redis_url).llen("celery") >= 1  # the tick it published
