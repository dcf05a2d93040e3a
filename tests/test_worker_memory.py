"""The worker's main process stays small. It only consumes and hands tasks to its pool:
the delivery path (rendering, SMTP, the ledger, bounce parsing) is loaded by the pool
processes that run it, and the start-up schema check runs in a child of its own
(worker/tasks.py). Memory, not time: the same on a loaded machine."""

import time
from pathlib import Path

import pytest

from tests.support.data import add_subscribers, load_stories

pytestmark = pytest.mark.slow  # a real Celery worker

# The main process started at 128 MB with the delivery path imported at the top of
# worker/tasks.py (98 MB of it once that moved, on PostgreSQL, with the driver the schema
# check loads); at 86 MB on both databases since.
MAIN_PROCESS_LIMIT_MB = 90


def _rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("reads /proc (Linux)")
    line = next(line for line in status.read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def test_the_workers_main_process_starts_small_and_its_pool_still_delivers(engine, tmp_path, smtp_server,
                                                                           start_worker, worker_env, run_cli):
    worker = start_worker()
    time.sleep(1)  # settled after " ready."
    at_start = _rss_mb(worker.proc.pid)
    assert at_start < MAIN_PROCESS_LIMIT_MB, f"main process at {at_start:.1f} MB"
    load_stories(engine, tmp_path)
    add_subscribers(engine, 8)  # one of them follows JP, which has no story: skipped
    result = run_cli("send", "--week", "2025-W05", "--wait", env=worker_env)
    assert result.code == 0, result.err + worker.output()[-2000:]
    assert len(smtp_server.received) == 7
    # Running tasks is the pool's: the main process loaded nothing more for them.
    assert _rss_mb(worker.proc.pid) < MAIN_PROCESS_LIMIT_MB
