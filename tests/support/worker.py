"""Real Celery worker processes for tests: `celery -A worker worker`, as users run it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO
from worker.celery_app import FRESH_PRIORITY, RECOVERED_PRIORITY


class WorkerProcess:
    def __init__(self, env: dict[str, str], log: Path, *, name: str = "w1", concurrency: int = 2,
                 queues: str | None = "celery,send", extra: list[str] | None = None) -> None:
        self.log = log
        self.name = name
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = str(REPO)
        full_env["PYTHONUNBUFFERED"] = "1"
        self.args = [sys.executable, "-m", "celery", "-A", "worker", "worker", *(["-Q", queues] if queues else []),
                     "-c", str(concurrency), "-P", "prefork", "-n", f"{name}@%h", "-l", "INFO",
                     "--without-heartbeat", "--without-gossip", "--without-mingle", *(extra or [])]
        self.env = full_env
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> WorkerProcess:
        self._fh = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=self.log.parent, stdout=self._fh,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            if " ready." in self.output():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"worker not ready after {timeout}s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def children(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (main process and pool children)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.kill(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(signal.SIGKILL)
            self.proc.wait(10)
        self._fh.close()


def wait_for(predicate, timeout: float = 60, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def queued(client, queue: str = "send") -> int:
    """Messages waiting in a queue, over every priority list kombu keeps for it on Redis
    (worker/celery_app.py: fresh batches wait in `send\\x06\\x166`, recovered ones in `send`)."""
    return sum(client.llen(f"{queue}\x06\x16{p}" if p else queue) for p in (RECOVERED_PRIORITY, FRESH_PRIORITY))
