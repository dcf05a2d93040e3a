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
- newsletter_delivery_lanes: delivery lanes (SMTP conversations) running now, summed over
  the live pool processes (worker/delivery/lanes.py).
- newsletter_variants_inlined_total {inliner}: documents rendered and CSS-inlined: one per
  region set (and per shortened form of one, clip.py), whether inlined whole or assembled
  from inlined sections (worker/render/sections.py).
- newsletter_inliner_calls_total {inliner}: calls into the CSS inliner: whole documents, and
  the new sections, skeletons and text runs that documents are assembled from.
- newsletter_late_reports_total {kind, source}: bounces and complaints heard after the relay
  accepted a message (worker/bounces/apply.py); kind permanent, transient, complaint,
  sender (refused for our side) or review,
  source dsn, arf, ses or json. Counted where they are processed (beat, CLI, web app).
  newsletter_late_report_reasons_total {reason}: the same by reason.

Read from the database at each scrape, by the web app (gauges; `LedgerCollector`). Editions
listed: the 20 created last plus every one not finished (sending, paused, held; the 200
newest of those), so a scrape costs the same in year five as in week one:

- newsletter_ledger_rows {edition, state}: ledger rows of each listed edition, every state,
  zeros included.
- newsletter_deliveries {state}: the same rows summed over the listed editions.
- newsletter_editions {state}: every edition by state (one row per send: a small table).
- newsletter_editions_held: editions waiting for approve or discard;
  newsletter_edition_held {edition}: 1 for each of them, labelled with its key.
- newsletter_source_consecutive_failures {source, feed}: failed polls in a row, per source
  id; `feed` is its URL without user name, password, query or fragment, at most 100
  characters (a URL may carry credentials: only what is left of it is a label).
- newsletter_source_last_success_timestamp_seconds {source, feed}: Unix time of the
  source's last successful poll, 0 if it never had one (so `time() - x` alerts on it too).
- newsletter_late_bounces {edition, kind}: bounce reports heard after the relay accepted the
  message (the `bounce_events` table), per listed edition and kind (permanent, transient,
  complaint, sender, review, dismissed, other).
- newsletter_late_bounce_reasons {edition, reason}: the same by reason (worker/bounces/reasons.py;
  `undefined` for none). newsletter_bounce_rate {edition}: readers bounced at RCPT or late over
  the messages tried (0 to 1; `status` warns from 0.02). newsletter_bounce_reports_for_review:
  reports of ours whose reason could not be read, waiting for `newsletter bounces review`.
- newsletter_story_clicks_total {kind}: story links opened through the click redirect
  (NEWSLETTER_COUNT_CLICKS, worker/clicks.py), every edition's: `counted` (readers) and
  `discounted` (link scanners, prefetches, previews); counts only, never who.
- newsletter_ledger_up: 1 if the ledger and editions could be read at this scrape;
  newsletter_sources_up, newsletter_bounces_up: the same for sources and bounce reports (each
  read on its own, so one failing leaves the others).

Read from Redis at each scrape, by the web app (worker/web/ratelimit.py):

- newsletter_confirmations_refused_total {limit}: confirmation mails held back by the
  per-mailbox or per-domain limit; newsletter_ratelimit_up: 1 if Redis could be read.

Where: a `celery worker` serves the sum over its pool processes on
NEWSLETTER_METRICS_PORT (`serve_worker`); the web app serves the database's gauges at the
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
from pathlib import Path
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server, values
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from worker.bounces.reasons import Reason
from worker.clicks import totals as click_totals
from worker.store.models import BounceEvent, BounceKind, Delivery, DeliveryState, Edition, EditionState, Source

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
        self.lanes = Gauge("newsletter_delivery_lanes", "Delivery lanes (SMTP conversations) running now.",
                           multiprocess_mode="livesum", registry=r)
        self.inlined = Counter("newsletter_variants_inlined", "Documents rendered and CSS-inlined, one per "
                               "region set and shortened form.", ["inliner"], registry=r)
        self.inliner_calls = Counter("newsletter_inliner_calls", "Calls into the CSS inliner: whole documents, "
                                     "and pieces documents are assembled from.", ["inliner"], registry=r)
        self.late_reports = Counter("newsletter_late_reports", "Bounces and complaints heard after the relay "
                                    "accepted a message.", ["kind", "source"], registry=r)
        self.late_reasons = Counter("newsletter_late_report_reasons", "Late bounces and complaints by their "
                                    "reason (worker/bounces/reasons.py).", ["reason"], registry=r)
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


def count_lanes(change: int) -> None:
    current().lanes.inc(change)


def count_inlined(inliner: str) -> None:
    current().inlined.labels(inliner=inliner).inc()


def count_inliner_call(inliner: str) -> None:
    current().inliner_calls.labels(inliner=inliner).inc()


def count_late_report(kind: str, source: str, reason: str | None = None) -> None:
    current().late_reports.labels(kind=kind, source=source).inc()
    current().late_reasons.labels(reason=reason or "undefined").inc()


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
    server, chosen = _listen(port, registry)
    if server is None:
        if owns:
            shutil.rmtree(directory, ignore_errors=True)
        return None
    port = chosen
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
# A second worker on the host finds the port taken by the first: it serves on one of the
# next few (Prometheus's scrape config lists them), and past those goes on without metrics.
_SPARE_PORTS = 8


def _listen(port: int, registry: CollectorRegistry):
    """(server, port) on `port` or the first free one of the next few; (None, port) if none."""
    first_error = None
    for candidate in range(port, min(port + _SPARE_PORTS + 1, 65536)):
        try:
            server, _thread = start_http_server(candidate, addr=EXPORTER_ADDRESS, registry=registry)
        except OSError as exc:
            first_error = first_error or exc
            continue
        if candidate != port:
            log.warning("metrics: %s:%s is taken (another worker on this host?); serving on port %s instead",
                        EXPORTER_ADDRESS, port, candidate)
        return server, candidate
    # Metrics are not worth a worker that does not deliver: say so and go on.
    log.warning("metrics: cannot listen on %s:%s or the %d ports after it (%s); this worker serves no metrics "
                "(NEWSLETTER_METRICS_PORT=0 turns the exporter off)", EXPORTER_ADDRESS, port, _SPARE_PORTS,
                getattr(first_error, "strerror", None) or first_error)
    return None, port


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


# The ledger, editions, sources and late bounces, read at scrape time.

# Editions listed per scrape besides the unfinished ones, and sources at most: a bound on
# series and on the work of one scrape.
RECENT_EDITIONS = 20
MAX_UNFINISHED = 200
MAX_SOURCES = 500
_UNFINISHED = (EditionState.SENDING.value, EditionState.PAUSED.value, EditionState.HELD.value)
_BOUNCE_KINDS = frozenset(kind.value for kind in BounceKind)
_REASONS = frozenset(reason.value for reason in Reason)
# Edition keys are ours (weekly-…, manual-…, -force-N), but a label is bounded whatever it holds.
MAX_LABEL = 120


class LedgerCollector(Collector):
    """The gauges the database holds (listed in the module docstring), at each scrape.

    A handful of small queries: editions by state (a small table), the listed editions'
    rows by state through the edition_id index, sources, and bounce reports of the
    listed editions. Sources and bounces are read separately from the ledger: a table
    that cannot be read is its `_up` gauge at 0, not a failed scrape.
    """

    def __init__(self, engine: Engine, *, recent: int = RECENT_EDITIONS) -> None:
        self._engine = engine
        self._recent = recent

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._ledger()
        yield from self._sources()
        yield from self._clicks()

    def _clicks(self) -> Iterator[CounterMetricFamily]:
        try:
            counted, discounted = click_totals(self._engine)
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the click counts: %s", type(exc).__name__)
            return
        family = CounterMetricFamily("newsletter_story_clicks", "Story links opened through the click redirect: "
                                     "counted (readers) and discounted (scanners, prefetches).", labels=["kind"])
        family.add_metric(["counted"], counted)
        family.add_metric(["discounted"], discounted)
        yield family

    def _ledger(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("newsletter_ledger_up", "1 if the ledger could be read at this scrape.")
        try:
            with self._engine.connect() as conn:
                by_state = dict(conn.execute(select(Edition.state, func.count()).group_by(Edition.state)).all())
                shown = self._listed(conn)
                listed = {edition_id: row.key for edition_id, row in shown.items()}
                counts = self._counts(conn, listed)
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the ledger: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        rows = GaugeMetricFamily("newsletter_ledger_rows", f"Ledger rows by state, of the {self._recent} editions "
                                 "created last and every unfinished one.", labels=["edition", "state"])
        totals = GaugeMetricFamily("newsletter_deliveries", "Ledger rows by state, summed over the editions "
                                   "in newsletter_ledger_rows.", labels=["state"])
        editions = GaugeMetricFamily("newsletter_editions", "Editions by state.", labels=["state"])
        held = GaugeMetricFamily("newsletter_editions_held", "Editions held for an operator's approve or discard.")
        each_held = GaugeMetricFamily("newsletter_edition_held", "1 for each held edition.", labels=["edition"])
        for key in sorted(listed.values()):
            for state in DeliveryState:
                rows.add_metric([_label(key), state.value], counts.get((key, state.value), 0))
        for state in DeliveryState:
            totals.add_metric([state.value], sum(n for (_key, s), n in counts.items() if s == state.value))
        for state in EditionState:
            editions.add_metric([state.value], by_state.get(state.value, 0))
        held.add_metric([], by_state.get(EditionState.HELD.value, 0))
        for key in sorted(row.key for row in shown.values() if row.state == EditionState.HELD.value):
            each_held.add_metric([_label(key)], 1)
        up.add_metric([], 1)
        yield from (rows, totals, editions, held, each_held, up)
        yield from self._bounces(listed, counts)

    def _listed(self, conn) -> dict:
        """id -> (id, key, state) of the editions shown: the recent ones and every unfinished one."""
        recent = conn.execute(select(Edition.id, Edition.key, Edition.state)
                              .order_by(Edition.created_at.desc(), Edition.id.desc()).limit(self._recent)).all()
        unfinished = conn.execute(select(Edition.id, Edition.key, Edition.state)
                                  .where(Edition.state.in_(_UNFINISHED))
                                  .order_by(Edition.created_at.desc(), Edition.id.desc()).limit(MAX_UNFINISHED)).all()
        return {row.id: row for row in [*recent, *unfinished]}

    @staticmethod
    def _counts(conn, listed: dict[int, str]) -> dict[tuple[str, str], int]:
        if not listed:
            return {}
        query = (select(Delivery.edition_id, Delivery.state, func.count())
                 .where(Delivery.edition_id.in_(list(listed)))
                 .group_by(Delivery.edition_id, Delivery.state))
        return {(listed[edition_id], state): count for edition_id, state, count in conn.execute(query)}

    def _bounces(self, listed: dict[int, str], counts: dict | None = None) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("newsletter_bounces_up", "1 if bounce reports could be read at this scrape.")
        late = GaugeMetricFamily("newsletter_late_bounces", "Bounce reports and complaints heard after the relay "
                                 "accepted the message, by edition and kind.", labels=["edition", "kind"])
        by_reason = GaugeMetricFamily("newsletter_late_bounce_reasons", "Bounce reports and complaints heard "
                                      "after the relay accepted the message, by edition and reason.",
                                      labels=["edition", "reason"])
        rates = GaugeMetricFamily("newsletter_bounce_rate", "Readers bounced by an edition (refused at RCPT or "
                                  "bounced late) over the messages tried, 0 to 1.", labels=["edition"])
        review = GaugeMetricFamily("newsletter_bounce_reports_for_review", "Reports of ours whose reason could "
                                   "not be read, waiting for `newsletter bounces review`.")
        found: dict[tuple[str, str], int] = {}
        reasons: dict[tuple[str, str], int] = {}
        late_bounced: dict[str, int] = {}
        waiting = 0
        try:
            with self._engine.connect() as conn:
                waiting = conn.scalar(select(func.count()).select_from(BounceEvent)
                                      .where(BounceEvent.kind == BounceKind.REVIEW.value)) or 0
                if listed:
                    for edition_id, kind, count in conn.execute(
                            select(BounceEvent.edition_id, BounceEvent.kind, func.count())
                            .where(BounceEvent.edition_id.in_(list(listed)))
                            .group_by(BounceEvent.edition_id, BounceEvent.kind)):
                        # The kinds are the bounces code's; anything else is counted, not trusted as a label.
                        label = (listed[edition_id], kind if kind in _BOUNCE_KINDS else "other")
                        found[label] = found.get(label, 0) + count
                    for edition_id, reason, count in conn.execute(
                            select(BounceEvent.edition_id, BounceEvent.reason, func.count())
                            .where(BounceEvent.edition_id.in_(list(listed)))
                            .group_by(BounceEvent.edition_id, BounceEvent.reason)):
                        label = (listed[edition_id], reason if reason in _REASONS else "undefined")
                        reasons[label] = reasons.get(label, 0) + count
                    for edition_id, count in conn.execute(
                            select(BounceEvent.edition_id, func.count(BounceEvent.delivery_id.distinct()))
                            .join(Delivery, Delivery.id == BounceEvent.delivery_id)
                            .where(BounceEvent.edition_id.in_(list(listed)),
                                   BounceEvent.kind == BounceKind.PERMANENT.value,
                                   Delivery.state == DeliveryState.BOUNCED.value)
                            .group_by(BounceEvent.edition_id)):
                        late_bounced[listed[edition_id]] = count
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read bounce reports: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        for (key, kind), count in sorted(found.items()):
            late.add_metric([_label(key), kind], count)
        for (key, reason), count in sorted(reasons.items()):
            by_reason.add_metric([_label(key), reason], count)
        if counts is not None:
            from worker.delivery.status import bounce_rate

            for key in sorted(listed.values()):
                rate = bounce_rate(sent=counts.get((key, DeliveryState.SENT.value), 0),
                                   bounced=counts.get((key, DeliveryState.BOUNCED.value), 0),
                                   late_bounced=late_bounced.get(key, 0))
                rates.add_metric([_label(key)], rate["rate"])
        review.add_metric([], waiting)
        up.add_metric([], 1)
        yield from (late, by_reason, rates, review)
        yield up

    def _sources(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("newsletter_sources_up", "1 if the sources could be read at this scrape.")
        try:
            with self._engine.connect() as conn:
                sources = conn.execute(select(Source.id, Source.url, Source.consecutive_failures,
                                              Source.last_success_at)
                                       .order_by(Source.id).limit(MAX_SOURCES)).all()
        except SQLAlchemyError as exc:
            log.warning("metrics: cannot read the sources: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        failures = GaugeMetricFamily("newsletter_source_consecutive_failures", "Failed polls in a row, by source "
                                     "id.", labels=["source", "feed"])
        success = GaugeMetricFamily("newsletter_source_last_success_timestamp_seconds", "Unix time of the last "
                                    "successful poll, by source id; 0 if none yet.", labels=["source", "feed"])
        for source_id, url, failed, last_success in sources:
            labels = [str(source_id), feed_label(url)]
            failures.add_metric(labels, failed or 0)
            success.add_metric(labels, last_success.timestamp() if last_success else 0)
        up.add_metric([], 1)
        yield from (failures, success, up)


def _label(text: str) -> str:
    return text[:MAX_LABEL]


MAX_FEED_LABEL = 100


def feed_label(url: str) -> str:
    """A source's URL as a label: scheme, host, port and path only (no user name, password,
    query or fragment: where credentials ride), bounded. A file source is its path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # an unparsable port or bracket: keep nothing of the address
        return "unparsable"
    text = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme and parts.netloc else parts.path
    text = "".join(ch for ch in text if ch.isprintable())
    return text if len(text) <= MAX_FEED_LABEL else text[:MAX_FEED_LABEL - 1] + "…"
