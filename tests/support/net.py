"""Waiting for a daemon the tests started to listen."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def wait_listening(port: int, *, what: str, log: Callable[[], str], timeout: float = 30) -> None:
    """Return once 127.0.0.1:port accepts a connection; else fail with the daemon's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}: {log()}")
