"""The one metrics seam: what production exposes and the benchmark reads.

Code says what happened through the functions below (`metrics.count_message(outcome, code)`,
`with metrics.stage_cpu("render"): ...`, `clock.lap("mime")`), the way Warehouse code talks to its
IMetricsService; nothing threads timers or counters through signatures, and there is
no second bookkeeping for tests or benchmarks: they read these same metrics.

Exposed (prometheus-client), name {labels}: what.

- newsletter_messages_total {outcome, code}: send results; outcome is sent, temporary,
  permanent, rejected, sender or unknown, code the SMTP reply code ("none" without one).
- newsletter_stage_cpu_seconds_total {stage}: thread CPU of the delivery path by stage:
  render, personalise, mime, ledger, smtp.
- newsletter_smtp_transaction_seconds (histogram): wall time of one SMTP transaction,
  MAIL FROM to the final reply.
- newsletter_smtp_connections_opened_total: SMTP connections opened (secured, authenticated).
- newsletter_variants_inlined_total {inliner}: region sets rendered and CSS-inlined.
- newsletter_ledger_rows {edition, state} (gauge): ledger rows, read from the database at
  scrape time (the web app); newsletter_ledger_up: 1 if that read worked.

Where: a `celery worker` serves the sum over its pool processes on
NEWSLETTER_METRICS_PORT (`serve_worker`); the web app serves the ledger gauge at the
operator-only `/metrics` (`LedgerCollector`). Anything else (tests, `send --inline`,
previews) counts in memory, in this process, readable with `sample()`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, or_, select
from sqlalchemy.exc import SQLAlchemyError

from worker.store.models import Delivery, DeliveryState, Edition, EditionState

log = logging.getLogger(__name__)

STAGES = ("render", "personalise", "mime", "ledger", "smtp")
# Loopback relays answer in well under a millisecond, a distant one in tens to hundreds;
# the top buckets are for tarpits and NEWSLETTER_SMTP_TIMEOUT (30 s by default).
SMTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The worker's exporter answers loopback only, like the operator pages without a token:
# counts and timings, but the operator's.
EXPORTER_ADDRESS = "127.0.0.1"


class Metrics:
    """The metrics of one process, on a registry of their own (so a test can build many)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages = Counter("newsletter_messages", "Send results by outcome and SMTP reply code.",
                                ["outcome", "code"], registry=r)
        self.stage_cpu = Counter("newsletter_stage_cpu_seconds", "Thread CPU seconds by delivery stage.",
                                 ["stage"], registry=r)
        self.smtp_seconds = Histogram("newsletter_smtp_transaction_seconds",
                                      "Wall time of one SMTP transaction, MAIL FROM to the final reply.",
                                      buckets=SMTP_BUCKETS, registry=r)
        self.connections = Counter("newsletter_smtp_connections_opened", "SMTP connections opened.", registry=r)
        self.inlined = Counter("newsletter_variants_inlined", "Region sets rendered and CSS-inlined.",
                               ["inliner"], registry=r)
        # Label lookups take a lock and build a tuple: the hot path finds its children here.
        self._stages = {stage: self.stage_cpu.labels(stage=stage) for stage in STAGES}
        self._messages: dict[tuple[str, int | None], Counter] = {}

    def message(self, outcome: str, code: int | None) -> None:
        child = self._messages.get((outcome, code))
        if child is None:
            child = self._messages.setdefault((outcome, code), self.messages.labels(
                outcome=str(outcome), code="none" if code is None else str(code)))
        child.inc()


class _CpuTimer:
    """Adds the thread CPU spent inside `with` to a stage. One per use: lanes are threads."""

    __slots__ = ("_child", "_started")

    def __init__(self, child) -> None:
        self._child = child

    def __enter__(self) -> _CpuTimer:
        self._started = time.thread_time()
        return self

    def __exit__(self, *_exc) -> None:
        self._child.inc(time.thread_time() - self._started)


class StageClock:
    """Thread CPU from lap to lap, each lap added to a stage: for consecutive stages of the hot
    path, one clock read per stage instead of two. One per thread (lanes are threads)."""

    __slots__ = ("_stages", "_last")

    def __init__(self, stages: dict) -> None:
        self._stages = stages
        self._last = time.thread_time()

    def lap(self, stage: str) -> None:
        """Add the CPU since the last lap (or restart) to `stage`."""
        now = time.thread_time()
        self._stages[stage].inc(now - self._last)
        self._last = now

    def restart(self) -> None:
        """Leave out what ran since the last lap (a wait, another stage's work)."""
        self._last = time.thread_time()


_current: Metrics | None = None
_current_lock = threading.Lock()


def current() -> Metrics:
    """This process's metrics, made on first use (in a pool process: after the fork)."""
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = Metrics()
    return _current


# The seam. Each is a few microseconds (a multiprocess counter is a write to a mapped file).

def stage_cpu(stage: str) -> _CpuTimer:
    """`with stage_cpu("ledger"): ...` adds the thread CPU of the block to the stage."""
    return _CpuTimer(current()._stages[stage])


def stage_clock() -> StageClock:
    """A running StageClock: `clock.lap("personalise")` after that stage's work, and so on."""
    return StageClock(current()._stages)


def count_message(outcome: str, code: int | None) -> None:
    current().message(outcome, code)


def observe_smtp_transaction(seconds: float) -> None:
    current().smtp_seconds.observe(seconds)


def count_connection() -> None:
    current().connections.inc()


def count_inlined(inliner: str) -> None:
    current().inlined.labels(inliner=inliner).inc()


def sample(name: str, **labels: str) -> float:
    """One sample of this process's metrics (0 when never counted): for tests."""
    return current().registry.get_sample_value(name, labels) or 0.0


# The worker's exporter.

@dataclass
class _Exporter:
    server: object | None = None
    directory: Path | None = None
    owns_directory: bool = False


_exporter = _Exporter()


def serve_worker(port: int) -> int | None:
    """Serve the worker's metrics on `port` (0: off); returns the port, or None.

    Call it in `celery worker`'s main process before the pool forks (Celery's
    celeryd_after_setup). Each pool process has its own counters: in prometheus-client's
    multiprocess mode each writes them to files in one directory (the one named by
    PROMETHEUS_MULTIPROC_DIR, else a fresh temporary one removed at shutdown), and this
    process serves their sum, so counts survive a pool process that is replaced.
    """
    global _current
    if not port:
        return None
    directory = os.environ.get(MULTIPROC_ENV)
    owns = not directory
    if owns:
        _remove_dead_workers_directories()
        directory = tempfile.mkdtemp(prefix=f"{_DIRECTORY_PREFIX}{os.getpid()}-")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)
    try:
        server, _thread = start_http_server(port, addr=EXPORTER_ADDRESS, registry=registry)
    except OSError as exc:
        if owns:
            shutil.rmtree(directory, ignore_errors=True)
        # Metrics are not worth a worker that does not deliver: say so and go on.
        log.error("metrics: cannot listen on %s:%s (%s); NEWSLETTER_METRICS_PORT=0 turns the exporter off",
                  EXPORTER_ADDRESS, port, exc.strerror or exc)
        return None
    os.environ[MULTIPROC_ENV] = directory  # inherited by the pool processes
    # prometheus-client 0.26 picks the value class when prometheus_client.values is first
    # imported, which may have been before the variable was set; metrics made from now on
    # use the mapped files.
    values.ValueClass = values.get_value_class()
    _current = None
    _exporter.server, _exporter.directory, _exporter.owns_directory = server, Path(directory), owns
    log.info("metrics: serving http://%s:%s/metrics", EXPORTER_ADDRESS, port)
    return port


_DIRECTORY_PREFIX = "newsletter-metrics-"


def _remove_dead_workers_directories() -> None:
    """A worker killed outright (SIGKILL) leaves its directory: removed by the next one to
    start, once the process named in it is gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{_DIRECTORY_PREFIX}*-*"):
        pid = path.name[len(_DIRECTORY_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def stop_worker() -> None:
    """Stop the exporter and remove the directory it made (Celery's worker_shutdown)."""
    if _exporter.server is not None:
        _exporter.server.shutdown()
        _exporter.server.server_close()
        _exporter.server = None
    if _exporter.owns_directory and _exporter.directory is not None:
        shutil.rmtree(_exporter.directory, ignore_errors=True)
    _exporter.directory, _exporter.owns_directory = None, False


# The ledger, read at scrape time.

class LedgerCollector(Collector):
    """newsletter_ledger_rows{edition, state}: rows of each edition in flight (sending or
    paused) or created in the last `recent` (so last week's final counts stay visible
    until the next one), every state present, zeros included, so no series vanishes.

    One grouped query over those editions' rows (the edition_id index), at each scrape.
    """

    def __init__(self, engine: Engine, *, recent: timedelta = timedelta(days=8)) -> None:
        self._engine = engine
        self._recent = recent

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        rows, up = self._families()
        try:
            counts = self._counts()
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the ledger: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        for edition in sorted({key for key, _state in counts}):
            for state in DeliveryState:
                rows.add_metric([edition, state.value], counts.get((edition, state.value), 0))
        up.add_metric([], 1)
        yield rows
        yield up

    def _counts(self) -> dict[tuple[str, str], int]:
        live = (EditionState.SENDING.value, EditionState.PAUSED.value)
        since = datetime.now(UTC) - self._recent
        query = (select(Edition.key, Delivery.state, func.count())
                 .join(Delivery, Delivery.edition_id == Edition.id)
                 .where(or_(Edition.state.in_(live), Edition.created_at >= since))
                 .group_by(Edition.key, Delivery.state))
        with self._engine.connect() as conn:
            return {(key, state): count for key, state, count in conn.execute(query)}

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily]:
        return (GaugeMetricFamily("newsletter_ledger_rows", "Ledger rows by state, of editions in flight "
                                  "or recent.", labels=["edition", "state"]),
                GaugeMetricFamily("newsletter_ledger_up", "1 if the ledger could be read at this scrape."))
