"""Throughput, CPU per stage, memory and planning benchmarks, with baselines measured
in the same run. See docs/benchmarks.md, and docs/capacity.md for what they say about
scaling out.

    python bench/run.py                      # defaults: N=20,000 over R=10 regions
    python bench/run.py --subscribers 2000   # smaller
    python bench/run.py --plan 1000000       # also the planning benchmark at 1M subscribers
    python bench/run.py --worker-groups 2    # two celery workers (node names, metrics ports) side by side

Needs PostgreSQL and Redis on 127.0.0.1 and Postfix's smtp-sink/smtp-source
(Debian package `postfix`; only its test tools are used, no mail system starts).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import resource
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

REGIONS = ["RU", "UA", "DE", "FR", "GB", "US", "CN", "PL", "IT", "JP"]
WEEK = "2025-W05"
KEY = f"weekly-{WEEK}"
ADMIN = os.environ.get("NEWSLETTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
BROKER = os.environ.get("NEWSLETTER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")
SUMMARY = ("Officials said on {day} that talks would continue next week, after a meeting that "
           "lasted late into the night. Analysts expect a decision before the end of the month, "
           "while opposition parties asked for a full debate in parliament first.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_of(pid: int, *, reaped: bool = True) -> float:
    """User + system CPU seconds of a process and, with `reaped`, of its children that have
    exited (the kernel adds a reaped child's time to its parent's cutime/cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(f) for f in fields[11:15 if reaped else 13]) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, IndexError):
        return 0.0


def tree_cpu(root: int) -> float:
    """CPU seconds of a process tree, including processes that came and went during the
    run (PostgreSQL backends, autovacuum workers): every live member's own and reaped time."""
    return sum(cpu_of(p) for p in descendants(root)) + cpu_of(root)


def descendants(pid: int) -> list[int]:
    found = []
    for child in children(pid):
        found += [child, *descendants(child)]
    return found


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def oldest(name: str) -> int:
    return int(subprocess.run(["pgrep", "-o", "-x", name], capture_output=True, text=True, check=True).stdout)


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def process_children(pid: int) -> list[int]:
    """Children of a process from /proc (no pgrep: this is sampled many times a second)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


class Backends:
    """CPU of the PostgreSQL backends serving one database. The cluster's process tree also
    holds the backends of whatever else uses this PostgreSQL (other people's tests); these
    are only the benchmark's, told apart by the database name in their process title.
    Sampled while the run goes on, so a backend that exits mid-run loses only its time
    since the last sample; one that starts mid-run counts from zero (fork resets it)."""

    def __init__(self, postmaster: int, database: str) -> None:
        self.postmaster = postmaster
        self.title = f" {database} ".encode()
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.peak = 0  # the most backends seen at once: the database connections in use
        self.sample()
        self.first = dict(self.last)

    def sample(self) -> int:
        """Read each of the database's backends; returns how many there are."""
        seen = 0
        for pid in process_children(self.postmaster):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if self.title in title:
                seen += 1
                self.last[pid] = max(self.last.get(pid, 0.0), cpu_of(pid, reaped=False))
        self.peak = max(self.peak, seen)
        return seen

    def seconds(self) -> float:
        self.sample()
        return sum(cpu - self.first.get(pid, 0.0) for pid, cpu in self.last.items())


def database_counters(url: str) -> dict[str, int]:
    """PostgreSQL's counters: transactions and row writes of this database, and WAL of the
    whole cluster (pg_stat_wal is not per database: other databases' writes are in it)."""
    from worker.store.db import create_db_engine

    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            db = conn.execute(sa.text(
                "SELECT xact_commit, xact_rollback, tup_updated, tup_inserted FROM pg_stat_database "
                "WHERE datname = current_database()")).one()
            wal = conn.execute(sa.text("SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal")).one()
    finally:
        engine.dispose()
    return {"transactions committed": db[0], "transactions rolled back": db[1], "rows updated": db[2],
            "rows inserted": db[3], "cluster WAL records": wal[0], "cluster WAL bytes": int(wal[1]),
            "cluster WAL writes": wal[2], "cluster WAL flushes": wal[3]}


def settle_backends(backends: Backends, *, seconds: float = 15.0) -> None:
    """Wait for the database's backends to exit: PostgreSQL counts a backend's transactions in
    pg_stat_database when it goes idle (at most once a second, or ten seconds later) or exits."""
    deadline = time.monotonic() + seconds
    while backends.sample() and time.monotonic() < deadline:
        time.sleep(0.1)


class Database:
    """A fresh database for one run; `settings` (e.g. {"commit_delay": "100"}) apply to its
    sessions only (ALTER DATABASE ... SET), not to the rest of the cluster."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        from worker.store.db import create_db_engine

        self.admin = sa.make_url(ADMIN)
        self.name = f"nl_bench_{uuid.uuid4().hex[:8]}"
        self.admin_engine = create_db_engine(self.admin.render_as_string(hide_password=False))
        with self.admin_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
            for name, value in (settings or {}).items():
                # A utility statement takes no parameters: both are checked to be plain words.
                if not (re.fullmatch(r"[a-z_]+", name) and re.fullmatch(r"[\w.]+", value)):
                    raise ValueError(f"not a PostgreSQL setting: {name}={value}")
                conn.execute(sa.text(f"ALTER DATABASE \"{self.name}\" SET {name} = '{value}'"))
        self.url = self.admin.set(database=self.name).render_as_string(hide_password=False)

    def drop(self) -> None:
        with self.admin_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def seed(url: str, subscribers: int, rng: random.Random) -> int:
    """A realistic week: 8 stories per region (some tagged twice) and N subscribers
    following 1 to 3 regions in random order. Returns the number of distinct region sets."""
    import psycopg

    from worker.store.db import create_db_engine, upgrade_schema

    upgrade_schema(create_db_engine(url))
    raw = sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(raw) as conn, conn.cursor() as cur:
        n = 0
        for region in REGIONS:
            for k in range(8):
                n += 1
                day = 27 + (k % 6)
                when = datetime(2025, 1, day if day <= 31 else day - 31, 6 + k, 0,
                                tzinfo=UTC).replace(month=1 if day <= 31 else 2)
                cur.execute(
                    "INSERT INTO stories (guid, url, title, summary_html, summary_text, published_at, source,"
                    " created_at, updated_at) VALUES (%s,%s,%s,%s,%s,%s,%s,now(),now()) RETURNING id",
                    (f"bench-{n}", f"https://news.example/{region}/{n}",
                     f"{region}: parliament debates the budget plan, story {n}",
                     f"<p>{SUMMARY.format(day=when.strftime('%A'))}</p>", SUMMARY.format(day=when.strftime('%A')),
                     when.replace(tzinfo=None), "melangenews"))
                story_id = cur.fetchone()[0]
                tags = [region] + ([rng.choice(REGIONS)] if k == 0 else [])
                for pos, tag in enumerate(dict.fromkeys(tags)):
                    cur.execute("INSERT INTO story_regions (story_id, region, position) VALUES (%s,%s,%s)",
                                (story_id, tag, pos))
        sets = set()
        with cur.copy("COPY subscribers (email, email_key, name, regions, status, created_at, updated_at) "
                      "FROM STDIN") as copy:
            now = datetime.now(UTC).replace(tzinfo=None)
            for i in range(subscribers):
                regions = " ".join(rng.sample(REGIONS, rng.randint(1, 3)))
                sets.add(regions)
                copy.write_row((f"reader{i}@example.org", f"reader{i}@example.org", f"Reader {i}", regions,
                                "active", now, now))
        conn.commit()
    return len(sets)


def message_size(url: str) -> int:
    """The bytes of one typical message of this run (for the baselines)."""
    from worker.delivery.pipeline import renderer_for
    from worker.delivery.plan import find_edition
    from worker.render.compose import Addressee, compose
    from worker.settings import load_settings
    from worker.store.db import create_db_engine

    settings = load_settings({"NEWSLETTER_DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": "bench"})
    engine = create_db_engine(url)
    renderer = renderer_for(engine, settings, find_edition(engine, KEY))
    variant = renderer.variant(("RU", "UA", "DE"))
    return len(compose(variant, Addressee("reader@example.org", "Reader", 1), settings=settings,
                       secret="bench").data)


class Sink:
    """smtp-sink on loopback; with `delay_ms`, reached through bench/delayproxy.py so every
    reply arrives that much later, as from a relay on another network."""

    def __init__(self, delay_ms: float = 0.0) -> None:
        self.sink_port = free_port()
        self.out = tempfile.NamedTemporaryFile(prefix="sink-", suffix=".out", delete=False)
        self.proc = subprocess.Popen(["smtp-sink", "-u", "nobody", "-c", f"127.0.0.1:{self.sink_port}", "1024"],
                                     stdout=self.out, stderr=subprocess.STDOUT)
        self.proxy = None
        self.port = self.sink_port
        if delay_ms:
            self.port = free_port()
            self.proxy = subprocess.Popen([sys.executable, str(REPO / "bench" / "delayproxy.py"), str(self.port),
                                           str(self.sink_port), "--delay-ms", str(delay_ms)])
        time.sleep(0.5)

    def count(self) -> int:
        text = Path(self.out.name).read_text(errors="replace")
        found = re.findall(r"mesg=(\d+)", text)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        for proc in (self.proc, self.proxy):
            if proc is not None:
                proc.kill()
                proc.wait()


def machine_cpu() -> tuple[float, float]:
    """(busy, stolen) CPU seconds of the whole machine since boot (/proc/stat): with what the
    benchmark's own processes used, how busy everything else kept the machine meanwhile."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle, steal = fields[3] + fields[4], fields[7]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle - steal) / hz, steal / hz


def others_cores(busy_before: float, ours: float, seconds: float) -> float:
    """Cores kept busy by processes outside the benchmark (other people's tests) meanwhile."""
    return round(max(machine_cpu()[0] - busy_before - ours, 0.0) / seconds, 2)


def baseline_smtp_source(size: int, count: int, *, sessions: int = 1, delay_ms: float = 0.0) -> tuple[float, dict]:
    """(messages per second, CPU per message of smtp-source and the sink, and the machine's other load)."""
    sink = Sink(delay_ms)
    try:
        busy, children_before, sink_before = machine_cpu()[0], resource.getrusage(resource.RUSAGE_CHILDREN), \
            tree_cpu(sink.proc.pid)
        started = time.perf_counter()
        subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size), "-f", "a@news.example",
                        "-t", "b@example.org", f"127.0.0.1:{sink.port}"], check=True, capture_output=True)
        seconds = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client = (after.ru_utime + after.ru_stime) - (children_before.ru_utime + children_before.ru_stime)
        sink_cpu = tree_cpu(sink.proc.pid) - sink_before
        return count / seconds, {"client_cpu_ms_per_message": round(client / count * 1000, 3),
                                 "sink_cpu_ms_per_message": round(sink_cpu / count * 1000, 3),
                                 "others_cores": others_cores(busy, client + sink_cpu, seconds)}
    finally:
        sink.stop()


def baseline_smtplib(size: int, count: int) -> tuple[float, dict]:
    """(messages per second, CPU per message of the loop and the sink, and the machine's other load)."""
    sink = Sink()
    body = (b"From: a@news.example\r\nTo: b@example.org\r\nSubject: x\r\n\r\n"
            + (b"x" * 76 + b"\r\n") * (size // 78))
    try:
        busy, client, sink_before = machine_cpu()[0], time.process_time(), tree_cpu(sink.proc.pid)
        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
            for _ in range(count):
                smtp.sendmail("a@news.example", ["b@example.org"], body)
        seconds = time.perf_counter() - started
        client = time.process_time() - client
        sink_cpu = tree_cpu(sink.proc.pid) - sink_before
        return count / seconds, {"client_cpu_ms_per_message": round(client / count * 1000, 3),
                                 "sink_cpu_ms_per_message": round(sink_cpu / count * 1000, 3),
                                 "others_cores": others_cores(busy, client + sink_cpu, seconds)}
    finally:
        sink.stop()


def worker_env(url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({"NEWSLETTER_DATABASE_URL": url, "NEWSLETTER_BROKER_URL": BROKER, "NEWSLETTER_EMAIL_BACKEND": "smtp",
                "NEWSLETTER_SMTP_HOST": "127.0.0.1", "NEWSLETTER_SMTP_PORT": str(port),
                "NEWSLETTER_SECRET_KEY": "bench-Tq8Hw3Mz6Kp1Xv9Ld4Rn7Yc2Fs5Jb",
                "NEWSLETTER_FROM": "Melange News <digest@news.example>",
                "NEWSLETTER_PUBLIC_URL": "https://news.example", "NEWSLETTER_SMTP_MAX_PER_CONNECTION": "100000",
                # the sink keeps the mail: the worker's readiness gate lets the sample settings pass
                "NEWSLETTER_SMTP_SINK": "true", "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path, app: str = "worker", queue: str = "celery,send",
                 concurrency: int = 2, node: str | None = None) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-c", str(concurrency),
                             "-l", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle",
                             *(["-n", node] if node else [])],
                            env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 60
    while " ready." not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(log.read_text()[-2000:])
        time.sleep(0.1)
    return proc


def flush_broker() -> None:
    import redis

    redis.Redis.from_url(BROKER).flushdb()


def scrape(port: int) -> dict[str, Counter]:
    """The worker's metrics (worker/metrics.py) from its exporter: sample name -> Counter of
    the sample's values by label set, e.g. {"newsletter_stage_cpu_seconds_total":
    {(("stage", "render"),): 1.2, ...}}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found: dict[str, Counter] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, Counter())[tuple(sorted(sample.labels.items()))] += sample.value
    return found


def sent_count(found: dict[str, Counter]) -> float:
    counted = found.get("newsletter_messages_total", Counter())
    return sum(v for k, v in counted.items() if ("outcome", "sent") in k)


def worker_metrics(ports: list[int], sent: int) -> list[dict[str, Counter]]:
    """Each worker's metrics, scraped once every message the ledger calls sent is counted
    by one of them: a pool process may count its last few a moment after the edition is done."""
    deadline = time.monotonic() + 10
    while True:
        found = [scrape(port) for port in ports]
        if sum(sent_count(f) for f in found) >= sent or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def by_label(samples: Counter, label: str) -> dict[str, float]:
    out: Counter = Counter()
    for labels, value in samples.items():
        out[dict(labels).get(label, "")] += value
    return dict(out)


class Timeline:
    """Messages sent by the workers, read from their metrics once a second."""

    def __init__(self, ports: list[int], started: float) -> None:
        self.ports, self.started = ports, started
        self.counts: list[float] = []
        self.lanes: list[int] = []  # delivery lanes running, all workers

    def sample(self) -> None:
        if time.perf_counter() - self.started >= len(self.counts) + 1:
            found = [scrape(port) for port in self.ports]
            self.counts.append(sum(sent_count(one) for one in found))
            self.lanes.append(int(sum(sum(one.get("newsletter_delivery_lanes", Counter()).values())
                                      for one in found)))

    def rates(self) -> list[int]:
        return [int(b - a) for a, b in zip([0.0, *self.counts], self.counts, strict=False)]


@dataclass
class WorkerGroup:
    """One `celery worker` of the run (a worker host, in the capacity model), with its own
    node name, metrics port and log."""

    node: str
    proc: subprocess.Popen
    metrics_port: int
    log: Path

    def processes(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def batch_outcomes(self) -> Counter:
        """What its batches reported (send_batch's log line), NotSent reasons included: rows
        lost to another worker would show here."""
        found: Counter = Counter()
        for text in re.findall(r"batch of \d+: (\{[^}]*\})", self.log.read_text(errors="replace")):
            found.update(ast.literal_eval(text))
        return found


def wait_for_pools(engine, workers: list[WorkerGroup], concurrency: int, timeout: float = 60) -> None:
    """Until every pool process beats. A pool process loads the delivery path as it starts,
    which may be after its main process said " ready." (worker/tasks.py): what is measured
    is delivery, from when every process can deliver, not their start."""
    from worker.store.models import Worker

    host = socket.gethostname()
    deadline = time.monotonic() + timeout
    while True:
        pids = [pid for group in workers for pid in children(group.proc.pid)]
        with engine.connect() as conn:
            beating = set(conn.execute(sa.select(Worker.name)).scalars())
        if len(pids) >= concurrency * len(workers) and {f"{host}:{pid}" for pid in pids} <= beating:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"pool processes {pids} not all beating after {timeout:.0f} s")
        time.sleep(0.1)


def start_groups(url: str, sink_port: int, extra: dict[str, str], *, groups: int,
                 concurrency: int) -> list[WorkerGroup]:
    started: list[WorkerGroup] = []
    directory = Path(tempfile.mkdtemp())
    try:
        for n in range(1, groups + 1):
            port = free_port()
            log = directory / f"worker{n}.log"
            env = worker_env(url, sink_port, NEWSLETTER_METRICS_PORT=str(port), **extra)
            node = f"bench{n}@{socket.gethostname()}"
            started.append(WorkerGroup(node, start_worker(env, log, concurrency=concurrency, node=node), port, log))
    except BaseException:
        stop_groups(started)
        raise
    return started


def stop_groups(groups: list[WorkerGroup]) -> None:
    for group in groups:
        group.proc.terminate()
    for group in groups:
        group.proc.wait(30)


def metrics_summary(found: dict[str, Counter]) -> dict:
    """The worker's own figures (worker/metrics.py), per message it sent."""
    def total(name: str) -> float:
        return sum(found.get(name, Counter()).values())

    messages = total("newsletter_messages_total")
    stage = by_label(found.get("newsletter_stage_cpu_seconds_total", Counter()), "stage")
    smtp_count = total("newsletter_smtp_transaction_seconds_count")
    return {
        "messages": int(messages),
        "messages_by_outcome_and_code": {f"{dict(k)['outcome']} {dict(k)['code']}": int(v)
                                         for k, v in sorted(found.get("newsletter_messages_total", Counter()).items())},
        "worker_stage_cpu_ms_per_message": {k: round(v / max(messages, 1) * 1000, 3) for k, v in stage.items()},
        "smtp_transaction_ms_mean": round(total("newsletter_smtp_transaction_seconds_sum") / max(smtp_count, 1)
                                          * 1000, 3),
        "smtp_connections_opened": int(total("newsletter_smtp_connections_opened_total")),
        # Documents inlined, one per region set (and per shortened form of one); calls into
        # the inliner, of whole documents or of the sections and skeletons they are assembled from.
        "variants_inlined": int(total("newsletter_variants_inlined_total")),
        "inliner_calls": int(total("newsletter_inliner_calls_total")),
    }


def merged(found: list[dict[str, Counter]]) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for one in found:
        for name, samples in one.items():
            out.setdefault(name, Counter()).update(samples)
    return out


class Profiler:
    """py-spy sampling each worker's pool processes while the edition is delivered: only samples
    that hold the GIL (Python's own CPU; lanes waiting for the GIL or a socket are left out),
    by function, as collapsed stacks for bench/stacks.py. py-spy takes CPU of its own, so a
    profiled run's throughput is not a figure to compare."""

    RATE = 200

    def __init__(self, directory: Path, groups: list[WorkerGroup]) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        directory.mkdir(parents=True, exist_ok=True)
        self.procs = [subprocess.Popen([spy, "record", "--pid", str(group.proc.pid), "--subprocesses", "--gil",
                                        "--function", "--nonblocking", "--rate", str(self.RATE), "--format", "raw",
                                        "--output", str(directory / f"{group.node.split('@')[0]}.txt")],
                                       stdout=subprocess.DEVNULL, stderr=open(directory / "py-spy.log", "a"))
                      for group in groups]

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in self.procs:
            proc.wait(60)


def run_pipeline(url: str, subscribers: int, sets: int, extra: dict[str, str], delay_ms: float = 0.0, *,
                 groups: int = 1, concurrency: int = 2, profile: Path | None = None) -> dict:
    """Deliver one edition through `groups` celery workers of `concurrency` processes each
    (with `profile`, sampled by py-spy into that directory)."""
    from worker.celery_app import create_app, publisher
    from worker.clock import utcnow
    from worker.delivery.plan import find_edition, plan_edition
    from worker.delivery.schedule import dispatch
    from worker.digest import week_window
    from worker.settings import load_settings
    from worker.store.db import create_db_engine

    flush_broker()
    sink = Sink(delay_ms)
    env = worker_env(url, sink.port, **extra)
    settings = load_settings({k: v for k, v in env.items() if k.startswith("NEWSLETTER_")})
    engine = create_db_engine(url)
    workers = start_groups(url, sink.port, extra, groups=groups, concurrency=concurrency)
    wait_for_pools(engine, workers, concurrency)
    procs = [p for group in workers for p in group.processes()]
    postmaster = oldest("postgres")  # PostgreSQL's postmaster is its oldest process
    # Roots of process trees.
    watched = {"postgres": postmaster, "redis": oldest("redis-server"), "smtp-sink": sink.proc.pid}
    watched.update({group.node: group.proc.pid for group in workers})
    if sink.proxy is not None:
        watched["delay proxy"] = sink.proxy.pid
    stopped = False
    profiler = Profiler(profile, workers) if profile else None
    try:
        backends = Backends(postmaster, sa.make_url(url).database)
        counters_before = database_counters(url)
        cpu_before = {k: tree_cpu(root) for k, root in watched.items()}
        busy_before, steal_before = machine_cpu()
        bench_before = time.process_time()
        main_before = sum(cpu_of(group.proc.pid, reaped=False) for group in workers)
        plan_cpu = time.process_time()
        started = time.perf_counter()
        planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window(WEEK, settings.tz), now=utcnow())
        plan_seconds = time.perf_counter() - started
        plan_cpu = time.process_time() - plan_cpu
        batches = dispatch(engine, settings, planned.edition_id, publisher(create_app(settings)), utcnow())
        timeline = Timeline([group.metrics_port for group in workers], started)
        while find_edition(engine, KEY).state != "done":
            if any(group.proc.poll() is not None for group in workers):
                # A broad `pkill -f "celery ... worker"` elsewhere on the machine does this.
                raise RuntimeError(f"a worker exited during the run: {[g.log for g in workers]}")
            backends.sample()
            timeline.sample()
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu_after = {k: tree_cpu(root) for k, root in watched.items()}
        own_backends = backends.seconds()
        ours = own_backends + time.process_time() - bench_before + sum(
            cpu_after[k] - cpu_before[k] for k in watched if k != "postgres")
        machine = {"others_cores": others_cores(busy_before, ours, elapsed),
                   "stolen_cores": round((machine_cpu()[1] - steal_before) / elapsed, 2)}
        if profiler is not None:
            profiler.stop()
        main_cpu = sum(cpu_of(group.proc.pid, reaped=False) for group in workers) - main_before
        with engine.connect() as conn:
            states = dict(conn.execute(sa.text("SELECT state, count(*) FROM deliveries GROUP BY state")).all())
        sent = states.get("sent", 0)
        # What production exposes is what is reported: each worker's metrics port, summed
        # over its pool processes (worker/metrics.py).
        found = worker_metrics([group.metrics_port for group in workers], sent)
        memory = {"worker processes": [round(peak_rss_mb(p), 1) for p in procs]}
        outcomes = [group.batch_outcomes() for group in workers]
        stop_groups(workers)
        stopped = True
        engine.dispose()
        settle_backends(backends)
        counters = {k: v - counters_before[k] for k, v in database_counters(url).items()}
        cpu = {k: (cpu_after[k] - cpu_before[k]) for k in watched}
        worker_cpu = sum(cpu[group.node] for group in workers)
        per_message = {"worker": worker_cpu, **{k: v for k, v in cpu.items() if k not in {g.node for g in workers}},
                       "postgres backends of this database": own_backends}
        summary = metrics_summary(merged(found))
        report = {
            "subscribers": subscribers, "distinct_region_sets": sets, "batches": batches, "states": states,
            "sink_received": sink.count(), "seconds": round(elapsed, 2),
            "messages_per_second": round(sent / elapsed, 1),
            # Messages sent in each second of the run: the first seconds render the region sets.
            "messages_per_second_timeline": timeline.rates(),
            "lanes_timeline": timeline.lanes,
            "plan_seconds": round(plan_seconds, 2), "plan_cpu_ms_per_message": round(plan_cpu / max(sent, 1) * 1000, 4),
            "cpu_ms_per_message": {k: round(v / max(sent, 1) * 1000, 3) for k, v in per_message.items()},
            "worker_main_process_cpu_ms_per_message": round(main_cpu / max(sent, 1) * 1000, 3),
            # Transactions and row writes are this database's alone; WAL is the cluster's (an upper
            # bound when other databases are busy).
            "postgres_per_message": {k: round(v / max(sent, 1), 3) for k, v in counters.items()},
            # Sampled every 50 ms; one of them is this benchmark's own (it watches the edition).
            "postgres_connections_peak": backends.peak,
            # Cores busy with processes outside this benchmark (other people's tests) meanwhile,
            # and stolen by the hypervisor: what makes absolute figures move between runs.
            "machine_during_run": machine,
            "postgres_backends_seen": len(backends.last),
            **{k: v for k, v in summary.items() if k != "messages"},
            "batch_outcomes": dict(sum(outcomes, Counter())),
            "peak_rss_mb": memory,
        }
        if groups > 1:
            report["worker_groups"] = [
                {"node": group.node, "concurrency": concurrency, "messages": one["messages"],
                 "messages_per_second": round(one["messages"] / elapsed, 1),
                 "cpu_seconds": round(cpu[group.node], 2),
                 "cpu_ms_per_message": round(cpu[group.node] / max(one["messages"], 1) * 1000, 3),
                 "batches": sum(1 for _ in re.finditer(r"batch of \d+:", group.log.read_text(errors="replace"))),
                 "batch_outcomes": dict(outcome),
                 **{k: one[k] for k in ("worker_stage_cpu_ms_per_message", "smtp_transaction_ms_mean",
                                        "smtp_connections_opened", "inliner_calls")}}
                for group, one, outcome in zip(workers, map(metrics_summary, found), outcomes, strict=True)]
        return report
    finally:
        if profiler is not None and any(proc.poll() is None for proc in profiler.procs):
            profiler.stop()
        if not stopped:
            stop_groups(workers)
        sink.stop()


def run_naive(url: str, count: int) -> float:
    from worker.clock import utcnow
    from worker.delivery.plan import find_edition, plan_edition
    from worker.digest import week_window
    from worker.settings import load_settings
    from worker.store.db import create_db_engine

    flush_broker()
    sink = Sink()
    env = worker_env(url, sink.port, NEWSLETTER_METRICS_PORT="0")
    settings = load_settings({k: v for k, v in env.items() if k.startswith("NEWSLETTER_")})
    engine = create_db_engine(url)
    key = "naive-" + KEY
    planned = plan_edition(engine, key=key, kind="manual", window=week_window(WEEK, settings.tz), now=utcnow())
    with engine.connect() as conn:
        ids = [r[0] for r in conn.execute(sa.text(
            f"SELECT id FROM deliveries WHERE edition_id = {planned.edition_id} AND state = 'pending' "
            f"ORDER BY random() LIMIT {count}"))]
    log = Path(tempfile.mkdtemp()) / "naive.log"
    worker = start_worker(env, log, app="bench.naive", queue="naive")
    try:
        from bench.naive import app

        app.conf.broker_url = BROKER
        started = time.perf_counter()
        for delivery_id in ids:
            app.send_task("naive.send_one", args=[planned.edition_id, delivery_id])
        while True:
            with engine.connect() as conn:
                done = conn.execute(sa.text(f"SELECT count(*) FROM deliveries WHERE edition_id = {planned.edition_id} "
                                            "AND state = 'sent'")).scalar()
            if done >= len(ids):
                break
            time.sleep(0.1)
        _ = find_edition
        return len(ids) / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(30)
        sink.stop()


def run_planning(count: int) -> dict:
    """Plan one edition over `count` subscribers in a fresh database, in a child process
    so its peak memory is its own (VmHWM: Linux carries ru_maxrss across exec)."""
    db = Database()
    try:
        rng = random.Random(1)
        seed(db.url, count, rng)
        code = ("import sys, time, resource, json; sys.path.insert(0, %r)\n"  # noqa: UP031
                "from worker.delivery.plan import plan_edition\nfrom worker.digest import week_window\n"
                "from worker.store.db import create_db_engine\nfrom zoneinfo import ZoneInfo\n"
                "from datetime import datetime, UTC\n"
                "e = create_db_engine(%r); t = time.perf_counter()\n"
                "p = plan_edition(e, key='plan', kind='weekly', window=week_window(%r, ZoneInfo('UTC')), "
                "now=datetime.now(UTC))\n"
                "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
                "print(json.dumps({'seconds': round(time.perf_counter() - t, 2), "
                "'peak_rss_mb': round(int(hwm) / 1024, 1)}))"
                ) % (str(REPO), db.url, WEEK)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        result = json.loads(out.strip().splitlines()[-1])
        result["subscribers"] = count
        return result
    finally:
        db.drop()


def run_once(args: argparse.Namespace, extra: dict[str, str]) -> dict:
    """One pipeline run on a fresh database, with its baselines measured right after it."""
    result: dict = {}
    db = Database(dict(item.split("=", 1) for item in args.postgres_set))
    try:
        sets = seed(db.url, args.subscribers, random.Random(args.seed))
        result["pipeline"] = run_pipeline(db.url, args.subscribers, sets, extra, args.relay_delay_ms,
                                          groups=args.worker_groups, concurrency=args.concurrency,
                                          profile=args.profile)
        size = message_size(db.url)
        result["message_bytes"] = size
        if args.relay_delay_ms:
            # As many SMTP sessions as the workers may hold: processes x their most lanes.
            from worker.delivery.lanes import AUTO_CAP

            lanes = extra.get("NEWSLETTER_SMTP_CONNECTIONS", "auto")
            sessions = args.worker_groups * args.concurrency * (AUTO_CAP if lanes == "auto" else int(lanes))
            result["relay_delay_ms"] = args.relay_delay_ms
            result["smtp_sessions"] = sessions
            rate, detail = baseline_smtp_source(size, 5000, sessions=sessions, delay_ms=args.relay_delay_ms)
        else:
            rate, detail = baseline_smtp_source(size, 5000)
        result["baseline_smtp_source"] = round(rate, 1)
        rate, smtplib_detail = baseline_smtplib(size, 5000)
        result["baseline_smtplib"] = round(rate, 1)
        result["baselines_cpu"] = {"smtp_source": detail, "smtplib": smtplib_detail}
        if args.naive:
            result["baseline_naive"] = round(run_naive(db.url, args.naive), 1)
    finally:
        db.drop()
    rate = result["pipeline"]["messages_per_second"]
    result["ratios"] = {
        "vs_smtp_source": round(rate / result["baseline_smtp_source"], 2),
        "vs_smtplib": round(rate / result["baseline_smtplib"], 2),
    }
    if "baseline_naive" in result:
        result["ratios"]["vs_naive"] = round(rate / result["baseline_naive"], 1)
    return result


def brief(run: dict) -> dict:
    """A run's headline figures, for the list of every run."""
    pipeline = run["pipeline"]
    return {"messages_per_second": pipeline["messages_per_second"], "ratios": run["ratios"],
            **{k: v for k, v in run.items() if k.startswith("baseline_")},
            "baselines_cpu": run["baselines_cpu"],
            **{k: pipeline[k] for k in ("cpu_ms_per_message", "worker_stage_cpu_ms_per_message",
                                        "postgres_per_message", "machine_during_run")}}


def commit() -> str:
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=20_000)
    parser.add_argument("--naive", type=int, default=300, help="subscribers for the naive baseline")
    parser.add_argument("--plan", type=int, default=0, help="also plan an edition over this many subscribers")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1,
                        help="run this many times and report the median run (runs here vary by about 5 %%)")
    parser.add_argument("--relay-delay-ms", type=float, default=0.0,
                        help="put a proxy that delays every server reply this long in front of smtp-sink")
    parser.add_argument("--set", action="append", default=[], metavar="NEWSLETTER_X=VALUE",
                        help="a setting for the worker, e.g. NEWSLETTER_SMTP_CONNECTIONS=24")
    parser.add_argument("--worker-groups", type=int, default=1, metavar="G",
                        help="run G celery workers side by side, each with its own node name (-n benchK@host) and "
                             "metrics port, against the one PostgreSQL and Redis; reports each and the total")
    parser.add_argument("--concurrency", type=int, default=2, metavar="C",
                        help="pool processes per celery worker (-c)")
    parser.add_argument("--postgres-set", action="append", default=[], metavar="NAME=VALUE",
                        help="a PostgreSQL setting for the benchmark's database only, e.g. commit_delay=100 "
                             "(with commit_siblings=1)")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="sample the workers with py-spy (pip install py-spy) into DIR; summarise with "
                             "bench/stacks.py DIR/*.txt --messages N")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # Stopped with SIGTERM (or SIGINT, which a background job ignores), a run still stops its
    # workers and sink and drops its database on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.worker_groups < 1 or args.concurrency < 1:
        print("--worker-groups and --concurrency are at least 1", file=sys.stderr)
        return 2
    for tool in ("smtp-sink", "smtp-source"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install postfix (only its test tools are used)", file=sys.stderr)
            return 2
    extra = dict(item.split("=", 1) for item in args.set)
    report: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit(),
                    "machine": f"{os.cpu_count()} cores, "
                    f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB", "settings": extra,
                    "worker_groups": args.worker_groups, "concurrency": args.concurrency,
                    "postgres_settings": args.postgres_set}
    runs = [run_once(args, extra) for _ in range(max(1, args.repeat))]
    report.update(sorted(runs, key=lambda r: r["pipeline"]["messages_per_second"])[len(runs) // 2])
    if len(runs) > 1:
        # Every run in the order it ran (the machine's speed drifts), each with its own baselines.
        report["runs"] = [brief(r) for r in runs]
    if args.plan:
        report["planning"] = run_planning(args.plan)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
