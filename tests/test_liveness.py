"""Nothing stands still: a dead worker's rows flow again within a minute (default settings),
a stopped worker loses its rows without anyone getting two copies, resume and a broker
outage hand rows out at once, and a plain `celery -A worker worker` delivers."""

import math
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from tests.support.data import add_subscribers, load_stories
from tests.support.oracle import assert_oracle
from tests.support.worker import WorkerProcess, wait_for
from worker.delivery.plan import find_edition

KEY = "weekly-2025-W05"
pytestmark = [pytest.mark.parametrize("db_url", ["postgresql"], indirect=True), pytest.mark.slow]
# Per delivery lane (4 by default): the transaction in flight and the previous result not yet written.
IN_FLIGHT = 2 * 4
# The README's figure: rows of a dead worker move on within a minute with default settings.
RECOVERY_BOUND = 60.0


def _setup(engine, tmp_path, count):
    load_stories(engine, tmp_path)
    subscribers = add_subscribers(engine, count, sets=[("RU", "UA"), ("DE",), ("US", "GB")])
    return {email for _, email, _ in subscribers}


def _rows(engine) -> dict[int, sa.Row]:
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT d.id, s.email, d.state, d.claimed_by, d.enqueued_at, d.last_reply FROM deliveries d "
            "JOIN subscribers s ON s.id = d.subscriber_id JOIN editions e ON e.id = d.edition_id "
            "WHERE e.key = :key ORDER BY d.id"), {"key": KEY}).all()
    return {r.id: r for r in rows}


def _names(worker: WorkerProcess) -> set[str]:
    """The ledger names of a worker's pool processes (deliveries.claimed_by)."""
    return {f"{socket.gethostname()}:{pid}" for pid in worker.children()}


def _held(engine, names: set[str]) -> dict[int, sa.Row]:
    return {i: r for i, r in _rows(engine).items() if r.claimed_by in names}


def _sent_count(engine) -> int:
    return sum(1 for r in _rows(engine).values() if r.state == "sent")


def _done(engine) -> bool:
    return find_edition(engine, KEY).state == "done"


def _finish(engine, tick) -> None:
    """Until the edition is done, ticking as beat would: a retry on a loaded machine comes due."""
    wait_for(lambda: (tick(), _done(engine))[1], timeout=180, interval=1.0, what="the edition to finish")


def _kill_holding_rows(engine, worker, smtp_server):
    """SIGKILL the worker's process group once it holds rows not yet sent; what it held then."""
    names = _names(worker)
    wait_for(lambda: len(smtp_server.received) >= 8 and
             sum(1 for r in _held(engine, names).values() if r.state == "pending") >= 4,
             timeout=120, interval=0.1, what="the worker to hold rows it has not sent")
    worker.kill(signal.SIGKILL)
    killed = time.monotonic()
    worker.proc.wait(10)
    held = _held(engine, names)
    assert held, "the kill landed between batches; nothing to prove"
    return killed, held


def _recovered_after(engine, smtp_server, held, since):
    """Seconds from `since` to the first message for a row the dead worker held, once
    every such row has left it (sent again, or `unknown` if it was mid-transaction)."""
    waiting = {i for i, r in held.items() if r.state == "pending"}
    emails = {held[i].email for i in waiting}

    dead = {r.claimed_by for r in held.values()}

    def moved_on():
        rows = _rows(engine)
        # Sent again, or tried again and failed (a loaded machine may time a transaction
        # out; its retry waits for a tick), by a worker that is alive.
        # A claim the stopped worker had sent can still commit on the server after the
        # stop (and after `held` was read): that row is in flight, and recovery makes it
        # `unknown` (the oracle bounds how many).
        return all(rows[i].state not in ("pending", "sending") or rows[i].claimed_by not in dead for i in held) \
            and all(rows[i].state in ("sent", "failed", "unknown") for i in waiting)

    wait_for(moved_on, timeout=180, interval=0.5,
             what=f"the dead worker's rows to move on: { {i: r.state for i, r in _rows(engine).items() if i in held} }")
    arrivals = [r.at for r in smtp_server.received if r.rcpt in emails and r.at > since]
    assert arrivals, "none of the dead worker's rows reached the relay again"
    return min(arrivals) - since


# Default timings: half a minute of liveness timeout, then the rest of the edition.
@pytest.mark.timeout(300)
def test_a_killed_workers_rows_flow_again_within_a_minute_while_another_runs(
        engine, tmp_path, smtp_server, start_worker, worker_env, run_cli, tick):
    """Default liveness, leases and redispatch: only the relay is slow, so the kill lands mid-batch."""
    everyone = _setup(engine, tmp_path, 150)
    smtp_server.plan.delay = 0.5
    w1 = start_worker("w1", concurrency=1)
    start_worker("w2", concurrency=1)
    assert run_cli("send", "--week", "2025-W05", env=worker_env).code == 0
    killed, held = _kill_holding_rows(engine, w1, smtp_server)
    seconds = _recovered_after(engine, smtp_server, held, killed)
    print(f"\nrecovery with another worker alive: {seconds:.1f} s after the kill", file=sys.__stderr__)
    assert seconds <= RECOVERY_BOUND
    rows = _rows(engine)
    died = [r for i, r in held.items() if r.state == "sending"]
    assert all(rows[r.id].state == "unknown" for r in died)
    assert all(rows[r.id].last_reply == "worker died during the SMTP transaction" for r in died)
    _finish(engine, tick)
    assert_oracle(engine, KEY, smtp_server, run_cli, worker_env, expect_sent=everyone, allowed_unknown=IN_FLIGHT)


# Default timings: half a minute of liveness timeout, then the rest of the edition.
@pytest.mark.timeout(300)
def test_a_killed_and_restarted_worker_has_rows_flowing_within_a_minute_of_the_restart(
        engine, tmp_path, smtp_server, start_worker, worker_env, run_cli, tick):
    """The only worker dies and comes back at once, no beat running: the restarted worker's
    processes find the dead one's heartbeat gone stale and hand its rows out."""
    everyone = _setup(engine, tmp_path, 100)
    smtp_server.plan.delay = 0.5
    w1 = start_worker("w1", concurrency=1)
    assert run_cli("send", "--week", "2025-W05", env=worker_env).code == 0
    _, held = _kill_holding_rows(engine, w1, smtp_server)
    start_worker("w1-again", concurrency=1)
    restarted = time.monotonic()
    seconds = _recovered_after(engine, smtp_server, held, restarted)
    print(f"\nrecovery after a restart: {seconds:.1f} s after the restart", file=sys.__stderr__)
    assert seconds <= RECOVERY_BOUND
    _finish(engine, tick)
    assert_oracle(engine, KEY, smtp_server, run_cli, worker_env, expect_sent=everyone, allowed_unknown=IN_FLIGHT)


# Default timings: half a minute of liveness timeout, then the rest of the edition.
@pytest.mark.timeout(300)
def test_a_stopped_worker_loses_its_rows_and_nobody_gets_two_copies(
        engine, tmp_path, smtp_server, start_worker, worker_env, run_cli, tick):
    """SIGSTOP past the liveness timeout (shortened here), SIGCONT: the stopped worker's rows
    went to the other worker; when it wakes up its claims and records lose the compare-and-set."""
    everyone = _setup(engine, tmp_path, 100)
    smtp_server.plan.delay = 0.4
    short = {"NEWSLETTER_LIVENESS_SECONDS": "6"}
    env = {**worker_env, **short}
    w1 = start_worker("w1", concurrency=1, **short)
    start_worker("w2", concurrency=1, **short)
    assert run_cli("send", "--week", "2025-W05", env=env).code == 0
    names = _names(w1)
    wait_for(lambda: sum(1 for r in _held(engine, names).values() if r.state == "pending") >= 4,
             timeout=120, interval=0.1, what="w1 to hold rows it has not sent")
    w1.kill(signal.SIGSTOP)
    stopped = time.monotonic()
    held = _held(engine, names)
    try:
        _recovered_after(engine, smtp_server, {i: r for i, r in held.items() if r.state == "pending"}, stopped)
    finally:
        w1.kill(signal.SIGCONT)
    _finish(engine, tick)
    # w1 woke up, is still running and beats again: alive, just late.
    assert w1.proc.poll() is None
    wait_for(lambda: names <= set(_beating(engine)), timeout=30, what="w1 to beat again")
    assert_oracle(engine, KEY, smtp_server, run_cli, env, expect_sent=everyone, allowed_unknown=IN_FLIGHT)


def _beating(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT name FROM workers")).scalars())


def test_resume_hands_a_paused_editions_rows_out_at_once(engine, tmp_path, smtp_server, start_worker, worker_env,
                                                         run_cli):
    """Paused mid-batch: the batch releases what it held; resume (default redispatch 600 s and
    batch lease 900 s) hands everything out again without waiting for either."""
    everyone = _setup(engine, tmp_path, 60)
    smtp_server.plan.delay = 0.3
    start_worker("w1", concurrency=1)
    assert run_cli("send", "--week", "2025-W05", env=worker_env).code == 0
    wait_for(lambda: _sent_count(engine) >= 5, timeout=60, what="5 sent")
    assert run_cli("pause", KEY, env=worker_env).code == 0
    wait_for(lambda: not any(r.claimed_by for r in _rows(engine).values() if r.state == "pending"),
             timeout=60, interval=0.2, what="the paused batch to release its rows")
    held_back = sum(1 for r in _rows(engine).values() if r.state == "pending")
    assert held_back > 0, "the edition finished before the pause; nothing to prove"
    resumed = run_cli("resume", KEY, env=worker_env)
    assert resumed.code == 0
    assert f"enqueued {math.ceil(held_back / 25)} batches" in resumed.out
    wait_for(lambda: _done(engine), timeout=60, interval=0.5, what="the resumed edition to finish")
    assert_oracle(engine, KEY, smtp_server, run_cli, worker_env, expect_sent=everyone)


def test_rows_are_marked_handed_out_only_when_the_broker_took_them(engine, tmp_path, run_cli, worker_env, tick):
    _setup(engine, tmp_path, 60)
    down = run_cli("send", "--week", "2025-W05", env={**worker_env, "NEWSLETTER_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert down.code != 0
    rows = _rows(engine)
    assert rows and all(r.enqueued_at is None for r in rows.values())
    # The broker is back: the next tick hands out every row at once, not after NEWSLETTER_REDISPATCH_SECONDS.
    assert tick().batches == math.ceil(sum(1 for r in rows.values() if r.state == "pending") / 25)
    assert all(r.enqueued_at is not None for r in _rows(engine).values() if r.state == "pending")


def test_a_plain_celery_worker_consumes_both_queues(engine, tmp_path, smtp_server, worker_env, run_cli):
    everyone = _setup(engine, tmp_path, 12)
    worker = WorkerProcess(worker_env, tmp_path / "plain.log", name="plain", concurrency=1, queues=None).start()
    try:
        assert "-Q" not in worker.args
        sent = run_cli("send", "--week", "2025-W05", "--wait", env=worker_env)
    finally:
        worker.stop()
    assert sent.code == 0, sent.err
    assert_oracle(engine, KEY, smtp_server, run_cli, worker_env, expect_sent=everyone)


def test_beat_keeps_its_schedule_file_under_var(tmp_path, worker_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update(worker_env, PYTHONPATH=str(os.getcwd()) + os.pathsep + str(_repo()))
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "INFO"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: list((tmp_path / "var").glob("celerybeat-schedule*")), timeout=30,
                 what="beat's schedule file")
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode(errors="replace")
    assert not list(tmp_path.glob("celerybeat-schedule*")), out


def _repo():
    from tests.conftest import REPO

    return REPO


def test_a_worker_on_an_older_schema_exits_with_the_reason(engine, tmp_path, worker_env):
    """Before any task: a worker that would fail (and use up) every task it took never starts."""
    with engine.begin() as conn:
        head = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0006'"))
    try:
        with pytest.raises(RuntimeError, match="worker exited with 2") as exited:
            WorkerProcess(worker_env, tmp_path / "old.log", name="old", concurrency=1).start()
        assert "the database schema is missing or out of date" in str(exited.value)
        assert "run `newsletter db upgrade`, then restart the worker" in str(exited.value)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = :v"), {"v": head})
