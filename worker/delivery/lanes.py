"""How many SMTP conversations (delivery lanes) a worker process holds at once.

A message costs a lane some CPU (composing, the ledger) and a wait for the relay (with
PIPELINING, two round trips). With the relay on the same network the CPU dominates and a
few lanes keep the process busy; with a relay tens of milliseconds away each lane waits far
longer than it works, and only more conversations in flight fill the wait: about
1 + wait / CPU lanes keep one core busy.

`NEWSLETTER_SMTP_CONNECTIONS=auto` (the default) starts each edition with START lanes a
process and, every half second of sending, raises them to HEADROOM x (1 + wait / CPU) if
that is more, up to AUTO_CAP. The wait is a low percentile of the window's SMTP
transactions (wall time, MAIL FROM to the final reply): lanes queueing for the GIL or for
a core make some transactions slower, not all of them, so the low percentile is the
relay's own time. The CPU is the process's CPU per message in the window, renders
included, so the first batches of an edition, which render, ask for no more lanes.
A number fixes the lanes at that number.

Either way the relay has the last word. A conversation it refuses at connect (a 421 or
454 greeting, a refused or reset connection) while other lanes hold theirs sets a ceiling
at the conversations held, for the rest of the edition, and the refused lane ends without
claiming a row. A 421/454 or x.7.x reply during a conversation (the relay asks us to slow
down) halves the lanes and sets the ceiling there. NEWSLETTER_SEND_RATE, when set, sends
through one lane, as the shared token bucket paces every message anyway.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from worker.settings import Settings

START = 4
# `auto` never holds more conversations than this per worker process.
AUTO_CAP = 32
# Lanes beyond the bare estimate: they also wait for the ledger's commits and each other.
HEADROOM = 1.5
# The shortest stretch of sending a decision is made on, and the fewest transactions.
WINDOW_SECONDS = 0.5
WINDOW_MESSAGES = 20
# The relay's own time: this share of the window's transactions took no longer.
RELAY_PERCENTILE = 0.1


def most_lanes(settings: Settings) -> int:
    """The most lanes a process can run: what bounds the rows in flight at a crash."""
    return AUTO_CAP if settings.smtp_connections == "auto" else settings.smtp_connections


def database_pool(settings: Settings) -> int:
    """Database connections a worker process keeps: lanes share one statement connection
    (group commit) and take another only for a moment, so this does not grow with them."""
    return min(most_lanes(settings), START) + 2


class Gauge:
    """The lane count of one edition in one process. Thread-safe: every lane reports to it."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic,
                 cpu: Callable[[], float] = time.process_time) -> None:
        self._clock, self._cpu = clock, cpu
        self.auto = settings.smtp_connections == "auto"
        self.lanes = START if self.auto else settings.smtp_connections
        self.ceiling = most_lanes(settings)
        self.reason = ""  # why the ceiling came down, for the log and status
        self._lock = threading.Lock()
        self._window: tuple[float, float] | None = None
        self._waits: list[float] = []

    def start(self) -> None:
        """A batch starts sending: the time between batches is not the lanes' to judge."""
        with self._lock:
            self._new_window()

    def observe(self, transaction: float | None) -> int:
        """A lane finished a row, after an SMTP transaction of `transaction` seconds (None:
        none was needed): the lane count to run now."""
        with self._lock:
            if not self.auto or self._window is None:
                return self.lanes
            if transaction is not None and len(self._waits) < 10_000:
                self._waits.append(transaction)
            wall0, cpu0 = self._window
            wall = self._clock() - wall0
            if wall < WINDOW_SECONDS or len(self._waits) < WINDOW_MESSAGES:
                return self.lanes
            cpu = (self._cpu() - cpu0) / len(self._waits)
            wait = sorted(self._waits)[int(len(self._waits) * RELAY_PERCENTILE)]
            self._new_window()
            wanted = math.ceil(HEADROOM * (1 + wait / max(cpu, 1e-6)))
            # Only up: a lane that ends closes its conversation and one that starts opens
            # another, several round trips to a distant relay; lanes following every
            # window's estimate would spend their time doing that.
            self.lanes = max(self.lanes, min(self.ceiling, wanted))
            return self.lanes

    def _new_window(self) -> None:
        self._window = (self._clock(), self._cpu())
        self._waits = []

    def crowded(self, holding: int, summary: str) -> int:
        """The relay refused another conversation while `holding` others were open."""
        with self._lock:
            self.ceiling = max(1, min(self.ceiling, holding))
            self.lanes = min(self.lanes, self.ceiling)
            self.reason = f"the relay refused a conversation beyond {holding}: {summary}"
            return self.lanes

    def slow_down(self, summary: str) -> int:
        """The relay asked us to slow down."""
        with self._lock:
            self.lanes = max(1, self.lanes // 2)
            self.ceiling = min(self.ceiling, self.lanes)
            self.reason = f"the relay asked to slow down: {summary}"
            return self.lanes


# Per process, keyed like the renderers (pipeline._RENDERERS): an edition's lanes
# outlive its batches, and each edition learns its relay afresh.
_GAUGES: OrderedDict[tuple, Gauge] = OrderedDict()
_MAX_GAUGES = 8
_gauges_lock = threading.Lock()


def gauge_for(key: tuple, settings: Settings) -> Gauge:
    with _gauges_lock:
        gauge = _GAUGES.get(key)
        if gauge is None:
            gauge = _GAUGES[key] = Gauge(settings)
            while len(_GAUGES) > _MAX_GAUGES:
                _GAUGES.popitem(last=False)
        return gauge
