"""Throughput, CPU per stage, memory and planning benchmarks, with baselines measured
in the same run. See the README's "Benchmarks" section.

    python bench/run.py                      # defaults: N=20,000 over R=10 regions
    python bench/run.py --subscribers 2000   # smaller
    python bench/run.py --plan 1000000       # also the planning benchmark at 1M subscribers

Needs PostgreSQL and Redis on 127.0.0.1 and Postfix's smtp-sink/smtp-source
(Debian package `postfix`; only its test tools are used, no mail system starts).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
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


class Database:
    def __init__(self) -> None:
        from worker.store.db import create_db_engine

        self.admin = sa.make_url(ADMIN)
        self.name = f"nl_bench_{uuid.uuid4().hex[:8]}"
        self.admin_engine = create_db_engine(self.admin.render_as_string(hide_password=False))
        with self.admin_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))
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


def baseline_smtp_source(size: int, count: int, *, sessions: int = 1, delay_ms: float = 0.0) -> float:
    sink = Sink(delay_ms)
    try:
        started = time.perf_counter()
        subprocess.run(["smtp-source", "-s", str(sessions), "-m", str(count), "-l", str(size), "-f", "a@news.example",
                        "-t", "b@example.org", f"127.0.0.1:{sink.port}"], check=True, capture_output=True)
        return count / (time.perf_counter() - started)
    finally:
        sink.stop()


def baseline_smtplib(size: int, count: int) -> float:
    sink = Sink()
    body = (b"From: a@news.example\r\nTo: b@example.org\r\nSubject: x\r\n\r\n"
            + (b"x" * 76 + b"\r\n") * (size // 78))
    try:
        started = time.perf_counter()
        with smtplib.SMTP("127.0.0.1", sink.port) as smtp:
            for _ in range(count):
                smtp.sendmail("a@news.example", ["b@example.org"], body)
        return count / (time.perf_counter() - started)
    finally:
        sink.stop()


def worker_env(url: str, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({"NEWSLETTER_DATABASE_URL": url, "NEWSLETTER_BROKER_URL": BROKER, "NEWSLETTER_EMAIL_BACKEND": "smtp",
                "NEWSLETTER_SMTP_HOST": "127.0.0.1", "NEWSLETTER_SMTP_PORT": str(port),
                "NEWSLETTER_SECRET_KEY": "bench", "NEWSLETTER_FROM": "Melange News <digest@news.example>",
                "NEWSLETTER_PUBLIC_URL": "https://news.example", "NEWSLETTER_SMTP_MAX_PER_CONNECTION": "100000",
                "PYTHONPATH": str(REPO)})
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log: Path, app: str = "worker", queue: str = "celery,send",
                 concurrency: int = 2) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", app, "worker", "-Q", queue, "-c", str(concurrency),
                             "-l", "INFO", "--without-heartbeat", "--without-gossip", "--without-mingle"],
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


def worker_metrics(port: int, sent: int) -> dict[str, Counter]:
    """Scraped once every message the ledger calls sent is counted: a pool process may count
    its last few a moment after the edition is done."""
    deadline = time.monotonic() + 10
    while True:
        found = scrape(port)
        counted = found.get("newsletter_messages_total", Counter())
        if sum(v for k, v in counted.items() if ("outcome", "sent") in k) >= sent or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def by_label(samples: Counter, label: str) -> dict[str, float]:
    out: Counter = Counter()
    for labels, value in samples.items():
        out[dict(labels).get(label, "")] += value
    return dict(out)


def run_pipeline(url: str, subscribers: int, sets: int, extra: dict[str, str], delay_ms: float = 0.0) -> dict:
    from worker.celery_app import create_app
    from worker.delivery.pipeline import utcnow
    from worker.delivery.plan import find_edition, plan_edition
    from worker.delivery.schedule import dispatch
    from worker.digest import week_window
    from worker.settings import load_settings
    from worker.store.db import create_db_engine
    from worker.tasks import publisher

    flush_broker()
    sink = Sink(delay_ms)
    log = Path(tempfile.mkdtemp()) / "worker.log"
    metrics_port = free_port()
    env = worker_env(url, sink.port, NEWSLETTER_METRICS_PORT=str(metrics_port), **extra)
    settings = load_settings({k: v for k, v in env.items() if k.startswith("NEWSLETTER_")})
    engine = create_db_engine(url)
    worker = start_worker(env, log)
    procs = [worker.pid, *children(worker.pid)]
    # Roots of process trees: PostgreSQL's postmaster is its oldest process.
    watched = {"worker": worker.pid, "postgres": oldest("postgres"), "redis": oldest("redis-server"),
               "smtp-sink": sink.proc.pid}
    if sink.proxy is not None:
        watched["delay proxy"] = sink.proxy.pid
    try:
        cpu_before = {k: tree_cpu(root) for k, root in watched.items()}
        main_before = cpu_of(worker.pid, reaped=False)
        plan_cpu = time.process_time()
        started = time.perf_counter()
        planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window(WEEK, settings.tz), now=utcnow())
        plan_seconds = time.perf_counter() - started
        plan_cpu = time.process_time() - plan_cpu
        batches = dispatch(engine, settings, planned.edition_id, publisher(create_app(settings)), utcnow())
        while find_edition(engine, KEY).state != "done":
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        cpu_after = {k: tree_cpu(root) for k, root in watched.items()}
        main_cpu = cpu_of(worker.pid, reaped=False) - main_before
        with engine.connect() as conn:
            states = dict(conn.execute(sa.text("SELECT state, count(*) FROM deliveries GROUP BY state")).all())
        sent = states.get("sent", 0)
        # What production exposes is what is reported: the worker's metrics port, summed
        # over its pool processes (worker/metrics.py).
        found = worker_metrics(metrics_port, sent)

        def total(name: str) -> float:
            return sum(found.get(name, Counter()).values())

        messages = total("newsletter_messages_total")
        outcomes = {f"{dict(k)['outcome']} {dict(k)['code']}": int(v)
                    for k, v in sorted(found.get("newsletter_messages_total", Counter()).items())}
        stage = by_label(found.get("newsletter_stage_cpu_seconds_total", Counter()), "stage")
        smtp_count = total("newsletter_smtp_transaction_seconds_count")
        smtp_sum = total("newsletter_smtp_transaction_seconds_sum")
        memory = {"worker processes": [round(peak_rss_mb(p), 1) for p in procs]}
        return {
            "subscribers": subscribers, "distinct_region_sets": sets, "batches": batches, "states": states,
            "sink_received": sink.count(), "seconds": round(elapsed, 2),
            "messages_per_second": round(sent / elapsed, 1),
            "plan_seconds": round(plan_seconds, 2), "plan_cpu_ms_per_message": round(plan_cpu / max(sent, 1) * 1000, 4),
            "cpu_ms_per_message": {k: round((cpu_after[k] - cpu_before[k]) / max(sent, 1) * 1000, 3) for k in watched},
            "worker_main_process_cpu_ms_per_message": round(main_cpu / max(sent, 1) * 1000, 3),
            "worker_stage_cpu_ms_per_message": {k: round(v / max(messages, 1) * 1000, 3) for k, v in stage.items()},
            "messages_by_outcome_and_code": outcomes,
            "smtp_transaction_ms_mean": round(smtp_sum / max(smtp_count, 1) * 1000, 3),
            "smtp_connections_opened": int(total("newsletter_smtp_connections_opened_total")),
            "inliner_calls": int(total("newsletter_variants_inlined_total")),
            "peak_rss_mb": memory,
        }
    finally:
        worker.terminate()
        worker.wait(30)
        sink.stop()


def run_naive(url: str, count: int) -> float:
    from worker.delivery.pipeline import utcnow
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
    db = Database()
    try:
        sets = seed(db.url, args.subscribers, random.Random(args.seed))
        result["pipeline"] = run_pipeline(db.url, args.subscribers, sets, extra, args.relay_delay_ms)
        size = message_size(db.url)
        result["message_bytes"] = size
        if args.relay_delay_ms:
            # The same number of SMTP sessions as the worker keeps open: 2 processes x lanes.
            sessions = 2 * int(extra.get("NEWSLETTER_SMTP_CONNECTIONS", "4"))
            result["relay_delay_ms"] = args.relay_delay_ms
            result["smtp_sessions"] = sessions
            result["baseline_smtp_source"] = round(baseline_smtp_source(size, 5000, sessions=sessions,
                                                                        delay_ms=args.relay_delay_ms), 1)
        else:
            result["baseline_smtp_source"] = round(baseline_smtp_source(size, 5000), 1)
        result["baseline_smtplib"] = round(baseline_smtplib(size, 5000), 1)
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


def main() -> int:
    parser = argparse.ArgumentParser()
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
    args = parser.parse_args()
    for tool in ("smtp-sink", "smtp-source"):
        if not shutil.which(tool):
            print(f"{tool} not found: apt-get install postfix (only its test tools are used)", file=sys.stderr)
            return 2
    extra = dict(item.split("=", 1) for item in args.set)
    report: dict = {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": f"{os.cpu_count()} cores, "
                    f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**30} GiB", "settings": extra}
    runs = sorted((run_once(args, extra) for _ in range(max(1, args.repeat))),
                  key=lambda r: r["pipeline"]["messages_per_second"])
    report.update(runs[len(runs) // 2])
    if len(runs) > 1:
        report["runs"] = [{"messages_per_second": r["pipeline"]["messages_per_second"], "ratios": r["ratios"]}
                          for r in runs]
    if args.plan:
        report["planning"] = run_planning(args.plan)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
