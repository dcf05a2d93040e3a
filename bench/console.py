"""The operator console at scale: a PostgreSQL database of N readers and E weekly editions
(one delivery row per reader active at each edition), filled in SQL, then every console
page timed over HTTP against the real web app (`newsletter serve --workers`), as an
operator with a named account would see it. See docs/benchmarks.md.

    python bench/console.py                                  # 1,000,000 readers, 50 editions
    python bench/console.py --readers 100000 --keep          # keep the database afterwards
    python bench/console.py --reuse                          # time the pages again, no fill
    python bench/console.py --readers 2000 --editions 3 --database nl_bench_tiny --json out.json

The database is newsletter_bench_console unless --database says otherwise; without
--keep (or --reuse) it is dropped at the end. A page that does not exist answers 404 and
is reported so: the page list is the contract, not what the branch has today.
Needs PostgreSQL on 127.0.0.1 (NEWSLETTER_TEST_POSTGRES_URL, the admin connection).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import sqlalchemy as sa  # noqa: E402

ADMIN = os.environ.get("NEWSLETTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
DEFAULT_DATABASE = "newsletter_bench_console"
TARGET_MS = 300
# The regions readers follow, the most followed first (the first pick is skewed towards them).
REGIONS = ["US", "GB", "DE", "FR", "IN", "BR", "CA", "AU", "ES", "IT", "NL", "PL", "SE", "JP", "MX",
           "RU", "UA", "TR", "ZA", "NG", "KE", "EG", "AR", "CL", "CO", "ID", "PH", "KR", "CN", "IE"]
FIRST = ["Anna", "Boris", "Chen", "Dana", "Emil", "Fatima", "Greta", "Hugo", "Ines", "Jonas",
         "Kofi", "Lena", "Marco", "Nadia", "Omar", "Priya", "Quinn", "Rosa", "Sven", "Tariq"]
LAST = ["Novak", "Schmidt", "Garcia", "Okafor", "Kowalski", "Rossi", "Tanaka", "Silva", "Dubois", "Ivanova",
        "Jensen", "Khan", "Larsen", "Moreau", "Nguyen", "Olsen", "Petrov", "Quispe", "Reyes", "Sato"]
OPERATORS = ["anna", "boris", "chen", "dana"]
ACTIONS = ["subscriber-changed", "subscriber-resubscribed", "subscriber-reactivated", "subscriber-added",
           "subscriber-purged", "unknown-resolved", "bounce-reviewed", "edition-approved", "edition-paused",
           "edition-resumed", "edition-retried", "subscribers-imported", "source-added"]
SQL_LIST = ", ".join  # a Python list of plain words written as a SQL array's items


def _array(words: list[str]) -> str:
    # Only this module's constants go in: plain ASCII words, no quote among them.
    assert all(re.fullmatch(r"[A-Za-z -]+", w) for w in words)
    return "ARRAY[" + SQL_LIST(f"'{w}'" for w in words) + "]"


# ---------------------------------------------------------------------------- the database

class Database:
    def __init__(self, name: str) -> None:
        from worker.store.db import create_db_engine

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise SystemExit(f"not a plain database name: {name!r}")
        self.name = name
        admin = sa.make_url(ADMIN)
        self.admin_engine = create_db_engine(admin.render_as_string(hide_password=False))
        self.url = admin.set(database=name).render_as_string(hide_password=False)

    def exists(self) -> bool:
        with self.admin_engine.connect() as conn:
            return bool(conn.scalar(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": self.name}))

    def create(self) -> None:
        self.drop()
        with self.admin_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{self.name}"'))

    def drop(self) -> None:
        with self.admin_engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def _h(expr: str, seed: int, bits: int) -> str:
    """A well-spread pseudo-random integer in [0, 2**bits) from an integer expression:
    the same reader gets the same draw on every run, and draws of different seeds are
    independent."""
    return f"(hashint8extended(({expr})::bigint, {seed}) & {(1 << bits) - 1})"


def fill(url: str, readers: int, editions: int, now: datetime, log) -> dict:
    """Everything in SQL, a statement per table (per edition for deliveries). Returns the
    seconds each step took."""
    from worker.store.db import create_db_engine, upgrade_schema

    timings: dict[str, float] = {}
    engine = create_db_engine(url)

    def step(name: str):
        return _Step(name, timings, log)

    with step("migrate"):
        upgrade_schema(engine)
    with engine.connect() as conn:
        conn.execute(sa.text("SET synchronous_commit = off"))
        conn.execute(sa.text("SET work_mem = '64MB'"))
        conn.execute(sa.text("SET maintenance_work_mem = '256MB'"))
        conn.commit()
        # Foreign keys are checked a row at a time while inserting; added back afterwards, each
        # is checked by one join, which is what a bulk load does.
        foreign = conn.execute(sa.text(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE contype = 'f' AND conrelid::regclass::text IN "
            "('deliveries', 'subscriber_events', 'bounce_events')")).all()
        for table, name, _ in foreign:
            conn.execute(sa.text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
        conn.commit()
        start = now - timedelta(days=365)
        with step("subscribers"):
            conn.execute(sa.text(_SUBSCRIBERS), {"n": readers, "start": _naive(start), "now": _naive(now)})
            conn.commit()
        with step("subscriber_events"):
            conn.execute(sa.text(_EVENTS))
            conn.commit()
        keys = _editions(conn, editions, now)
        conn.commit()
        with step("deliveries"):
            for number, (edition_id, _, at, last) in enumerate(keys, 1):
                began = time.perf_counter()
                total = conn.execute(sa.text(_DELIVERIES), {"e": edition_id, "t": at, "last": last}).rowcount
                conn.execute(sa.text("UPDATE editions SET total = :n WHERE id = :e"), {"n": total, "e": edition_id})
                conn.commit()
                log(f"  edition {number}/{len(keys)}: {total:,} rows in {time.perf_counter() - began:.1f} s")
        with step("foreign keys"):
            for table, name, definition in foreign:
                conn.execute(sa.text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))
            conn.commit()
        with step("bounce_events, audit_events, sources"):
            conn.execute(sa.text(_BOUNCES))
            conn.execute(sa.text(_AUDIT), {"n": max(readers // 200, 50), "start": _naive(start), "now": _naive(now),
                                           "readers": readers, "editions": editions})
            conn.execute(sa.text(_SOURCES), {"now": _naive(now)})
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('subscribers', 'id'), :n)"), {"n": readers})
            conn.commit()
    with step("vacuum analyze"):
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text("VACUUM (ANALYZE)"))
    with step("tallies of the finished editions"):
        store_missing_tallies(engine, log)
    engine.dispose()
    return timings


def store_missing_tallies(engine, log) -> int:
    """What the worker does as each edition finishes (worker/delivery/tallies.py), for the
    editions this script wrote as finished in SQL: their counts stored once."""
    from worker.delivery.tallies import store_at_finish
    from worker.store.models import EditionTally

    with engine.connect() as conn:
        missing = conn.execute(sa.select(sa.text("id")).select_from(sa.text("editions")).where(
            sa.text("state IN ('done', 'skipped') AND finished_at IS NOT NULL"),
            sa.text(f"id NOT IN (SELECT edition_id FROM {EditionTally.__tablename__})")).order_by(sa.text("id"))
        ).scalars().all()
    for edition_id in missing:
        began = time.perf_counter()
        store_at_finish(engine, edition_id)
        log(f"  edition {edition_id}: tallies stored in {time.perf_counter() - began:.1f} s")
    return len(missing)


class _Step:
    def __init__(self, name: str, timings: dict[str, float], log) -> None:
        self.name, self.timings, self.log = name, timings, log

    def __enter__(self):
        self.log(f"{self.name} ...")
        self.began = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = round(time.perf_counter() - self.began, 1)
        self.log(f"{self.name}: {self.timings[self.name]} s")


# Half the list came in one import a year ago (a move from another tool); the other half
# signed up through the form since, one after another (ids in the order they came).
_SUBSCRIBERS = f"""
INSERT INTO subscribers (id, email, email_key, name, regions, status, status_changed_at, created_at, updated_at,
                         confirm_nonce, confirm_sent_at, confirm_regions)
SELECT n, email, email, name, regions, status, changed, created, coalesce(changed, created),
       CASE WHEN status = 'pending' THEN md5(n::text) END,
       CASE WHEN status = 'pending' THEN created END,
       CASE WHEN status = 'pending' THEN regions END
FROM (
  SELECT n, email, name, regions, status, created,
         CASE WHEN status IN ('unsubscribed', 'bounced', 'complained')
              THEN created + (:now - created) * ({_h('n', 3, 10)} + 1) / 1025.0 END AS changed
  FROM (
    SELECT n,
           'reader' || n || '@example' || (n % 500) || '.org' AS email,
           CASE WHEN n % 3 = 0 THEN NULL
                ELSE ({_array(FIRST)})[1 + {_h('n', 4, 16)} % 20] || ' ' || ({_array(LAST)})[1 + {_h('n', 5, 16)} % 20]
           END AS name,
           ({_array(REGIONS)})[1 + i1]
             || CASE WHEN k >= 1 THEN ' ' || ({_array(REGIONS)})[1 + (i1 + d2) % 30] ELSE '' END
             || CASE WHEN k >= 2 THEN ' ' || ({_array(REGIONS)})[1 + (i1 + d3) % 30] ELSE '' END AS regions,
           CASE WHEN s < 870 THEN 'active' WHEN s < 940 THEN 'unsubscribed' WHEN s < 970 THEN 'bounced'
                WHEN s < 980 THEN 'complained' ELSE 'pending' END AS status,
           CASE WHEN n <= :n / 2 THEN :start + (n::float / (:n / 2 + 1)) * interval '1 hour'
                ELSE :start + interval '1 day' + ((n - :n / 2)::float / (:n / 2 + 1)) * interval '363 days'
           END AS created
    FROM (
      SELECT n, s, k, i1, d2, 1 + (d2 - 1 + 1 + {_h('n', 9, 16)} % 28) % 29 AS d3
      FROM (
        SELECT n, {_h('n', 2, 10)} AS s,
               CASE WHEN {_h('n', 6, 10)} < 600 THEN 0 WHEN {_h('n', 6, 10)} < 900 THEN 1 ELSE 2 END AS k,
               floor(30 * power({_h('n', 7, 16)} / 65536.0, 2))::int AS i1,
               1 + {_h('n', 8, 16)} % 29 AS d2
        FROM generate_series(1, :n) AS n
      ) drawn
    ) more
  ) reader
) final
"""

# What each reader's history says: the import or the sign-up and its confirmation, then
# how they left if they did. In time order, as they would have been written.
_EVENTS = """
INSERT INTO subscriber_events (subscriber_id, at, kind, via, status, regions, note, by)
SELECT * FROM (
  SELECT id, created_at, 'subscribed', 'import', 'active', regions, 'import.csv', 'cli (anna)'
  FROM subscribers WHERE confirm_nonce IS NULL AND created_at < (SELECT min(created_at) + interval '2 hours'
                                                                  FROM subscribers)
  UNION ALL
  SELECT id, created_at, 'requested', 'form', 'pending', regions, NULL, NULL
  FROM subscribers WHERE confirm_nonce IS NOT NULL
     OR created_at >= (SELECT min(created_at) + interval '2 hours' FROM subscribers)
  UNION ALL
  SELECT id, created_at + (id % 3600) * interval '1 second', 'confirmed', 'confirm-link', 'active', regions, NULL, NULL
  FROM subscribers WHERE status <> 'pending' AND created_at >= (SELECT min(created_at) + interval '2 hours'
                                                                FROM subscribers)
  UNION ALL
  SELECT id, status_changed_at, status,
         CASE status WHEN 'unsubscribed'
                     THEN (ARRAY['one-click', 'one-click', 'manage-page', 'unsubscribe-page'])[1 + id % 4]
                     WHEN 'bounced' THEN CASE WHEN id % 2 = 0 THEN 'refused-at-send' ELSE 'bounce' END
                     ELSE 'bounce' END,
         status, regions,
         CASE status WHEN 'bounced' THEN '550 5.1.1 user unknown' WHEN 'complained' THEN 'abuse report (ARF)' END,
         NULL
  FROM subscribers WHERE status IN ('unsubscribed', 'bounced', 'complained')
) events (subscriber_id, at, kind, via, status, regions, note, by)
ORDER BY at
"""

# One row per reader who was on the list when the edition went out: signed up before it
# and not yet gone. A reader who bounced at send (even ids) bounced on the last edition
# before their status changed; the others' replies are drawn. The edition still sending
# has a third of its rows to go.
_DELIVERIES = f"""
INSERT INTO deliveries (edition_id, subscriber_id, regions, state, attempts, next_attempt_at, enqueued_at,
                        last_code, last_reply, message_id, sent_at, updated_at)
SELECT :e, id, regions, state, CASE state WHEN 'pending' THEN 0 WHEN 'failed' THEN 5 ELSE 1 END, NULL,
       CASE WHEN state <> 'pending' THEN CAST(:t AS timestamp) END,
       CASE state WHEN 'sent' THEN 250 WHEN 'failed' THEN 451 WHEN 'bounced' THEN 550 END,
       CASE state WHEN 'sent' THEN '2.0.0 Ok: queued as ' || upper(to_hex(:e * 16777216 + id))
                  WHEN 'failed' THEN (ARRAY['4.7.1 Greylisted, try again later',
                                            '4.4.2 Connection timed out'])[1 + id % 2]
                  WHEN 'bounced' THEN '5.1.1 <' || email || '>: Recipient address rejected: User unknown'
                  WHEN 'unknown' THEN 'connection lost after the end of data: the server may have accepted it'
       END,
       CASE WHEN state IN ('sent', 'unknown', 'bounced') THEN '<' || :e || '.' || id || '.bench@news.example>' END,
       CASE WHEN state = 'sent' THEN sent END,
       coalesce(sent, CAST(:t AS timestamp))
FROM (
  SELECT id, regions, email,
         CAST(:t AS timestamp) + {_h('id * 64 + :e', 11, 12)} * interval '1 second' * 3600 / 4096 AS sent,
         CASE WHEN status = 'bounced' AND id % 2 = 0 AND status_changed_at < CAST(:t AS timestamp) + interval '7 days'
                   THEN 'bounced'
              WHEN :last AND {_h('id * 64 + :e', 12, 10)} < 340 THEN 'pending'
              WHEN {_h('id * 64 + :e', 13, 13)} < 80 THEN 'failed'
              WHEN {_h('id * 64 + :e', 13, 13)} < 82 THEN 'unknown'
              ELSE 'sent' END AS state
  FROM subscribers
  WHERE created_at < :t AND status <> 'pending' AND (status = 'active' OR status_changed_at > :t)
  ORDER BY id
) planned
"""

# Reports heard after the relay accepted a message: the permanent bounce of the readers who
# bounced later (odd ids), the complaints, and some temporary ones that changed nothing.
_BOUNCES = """
INSERT INTO bounce_events (fingerprint, kind, source, delivery_id, edition_id, subscriber_id, recipient, code,
                           reason, diagnostic, received_at)
SELECT md5(s.kind || d.id), s.kind, CASE s.kind WHEN 'complaint' THEN 'arf' ELSE 'dsn' END, d.id, d.edition_id,
       s.id, s.email, CASE s.kind WHEN 'permanent' THEN '5.1.1' END,
       CASE s.kind WHEN 'permanent' THEN 'userunknown' END,
       CASE s.kind WHEN 'permanent' THEN 'smtp; 550 5.1.1 user unknown' END,
       d.sent_at + interval '3 minutes'
FROM (
  SELECT id, email, status_changed_at AS at,
         CASE status WHEN 'complained' THEN 'complaint' ELSE 'permanent' END AS kind
  FROM subscribers
  WHERE status = 'complained' OR (status = 'bounced' AND id % 2 = 1)
) s
JOIN editions e ON e.created_at < s.at AND e.created_at >= s.at - interval '7 days'
JOIN deliveries d ON d.edition_id = e.id AND d.subscriber_id = s.id AND d.state = 'sent'
UNION ALL
SELECT md5('transient' || d.id), 'transient', 'dsn', d.id, d.edition_id, d.subscriber_id, s.email, '4.2.2',
       'mailboxfull', 'smtp; 452 4.2.2 mailbox full', d.sent_at + interval '5 minutes'
FROM subscribers s JOIN deliveries d ON d.subscriber_id = s.id AND d.edition_id = (SELECT max(id) - 1 FROM editions)
WHERE s.status = 'active' AND s.id % 97 = 0 AND d.state = 'sent'
"""

_AUDIT = f"""
INSERT INTO audit_events (at, who, via, action, target, detail)
SELECT :start + (n::float / :n) * (CAST(:now AS timestamp) - :start),
       ({_array(OPERATORS)})[1 + n % 4], CASE WHEN n % 3 = 0 THEN 'cli' ELSE 'console' END, action,
       CASE WHEN action LIKE 'edition%' THEN 'weekly edition ' || (1 + n % :editions)
            WHEN action LIKE 'subscriber-%' OR action = 'unknown-resolved'
                 THEN 'reader' || (1 + {_h('n', 21, 30)} % :readers) || '@example' || (n % 500) || '.org'
       END,
       CASE WHEN action = 'subscriber-resubscribed' THEN 'reason: asked by mail to come back' END
FROM (SELECT n, ({_array(ACTIONS)})[1 + {_h('n', 20, 16)} % {len(ACTIONS)}] AS action
      FROM generate_series(1, :n) AS n) a
ORDER BY n
"""

_SOURCES = f"""
INSERT INTO sources (url, region, origin, last_polled_at, last_success_at, last_error, last_error_at, items_added,
                     last_rejected, consecutive_failures, next_poll_at, created_at)
SELECT 'https://news.example/' || lower(code) || '/feed.xml', code, 'config',
       CAST(:now AS timestamp) - interval '5 min',
       CAST(:now AS timestamp) - CASE WHEN i % 10 = 0 THEN interval '2 days' ELSE interval '5 min' END,
       CASE WHEN i % 10 = 0 THEN 'HTTP 503 Service Unavailable' END,
       CASE WHEN i % 10 = 0 THEN CAST(:now AS timestamp) - interval '5 min' END,
       400 + i * 37, i % 3, CASE WHEN i % 10 = 0 THEN 12 ELSE 0 END,
       CAST(:now AS timestamp) + interval '10 min', CAST(:now AS timestamp) - interval '365 days'
FROM unnest({_array(REGIONS)}) WITH ORDINALITY AS r(code, i)
"""


def _editions(conn, count: int, now: datetime) -> list[tuple[int, str, datetime, bool]]:
    """The weekly editions of the last `count` weeks, each planned at 06:00 UTC on the Monday
    after its week; all done but the newest, still sending. (id, key, planned at, newest)."""
    from zoneinfo import ZoneInfo

    from worker.digest import week_window

    monday = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    out = []
    for back in range(count, 0, -1):
        week_start = monday - timedelta(weeks=back)
        iso = week_start.isocalendar()
        window = week_window(f"{iso.year}-W{iso.week:02d}", ZoneInfo("UTC"))
        planned = min(window.end + timedelta(hours=6), now - timedelta(hours=1))
        last = back == 1
        edition_id = conn.execute(sa.text(
            "INSERT INTO editions (key, kind, label, window_start, window_end, state, total, created_at, "
            "finished_at, probes) VALUES (:key, 'weekly', :label, :ws, :we, :state, 0, :at, :done, 0) RETURNING id"),
            {"key": f"weekly-{window.label}", "label": window.label, "ws": _naive(window.start),
             "we": _naive(window.end), "state": "sending" if last else "done", "at": _naive(planned),
             "done": None if last else _naive(planned + timedelta(hours=1))}).scalar_one()
        out.append((edition_id, f"weekly-{window.label}", _naive(planned), last))
    return out


def _naive(at: datetime) -> datetime:
    # The UTC columns are `timestamp without time zone` holding UTC.
    return at.astimezone(UTC).replace(tzinfo=None)


def sizes(url: str) -> dict:
    from worker.store.db import create_db_engine

    engine = create_db_engine(url)
    with engine.connect() as conn:
        out = {"database_mb": round(conn.scalar(sa.text("SELECT pg_database_size(current_database())")) / 2**20)}
        for table in ("subscribers", "subscriber_events", "editions", "deliveries", "bounce_events", "audit_events"):
            rows = conn.scalar(sa.text(f"SELECT count(*) FROM {table}"))
            mb = conn.scalar(sa.text(f"SELECT pg_total_relation_size('{table}')")) / 2**20
            out[table] = {"rows": rows, "mb_with_indexes": round(mb)}
    engine.dispose()
    return out


# ---------------------------------------------------------------------------- the web app

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def newsletter(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from worker.cli import main; main()", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def operator_token(env: dict[str, str]) -> str:
    """A fresh token of the operator `bench` (made again on a reused database)."""
    newsletter(env, "operators", "remove", "bench")
    made = newsletter(env, "operators", "add", "bench")
    if made.returncode:
        raise SystemExit(f"newsletter operators add bench failed: {made.stderr or made.stdout}")
    tokens = re.findall(r"^  (\S{30,})$", made.stdout, re.M)
    if not tokens:
        raise SystemExit(f"no token in the output of `operators add`: {made.stdout!r}")
    return tokens[-1]


class Server:
    """`newsletter serve --workers W`: gunicorn, as in production."""

    def __init__(self, env: dict[str, str], workers: int) -> None:
        self.port = free_port()
        self.log = tempfile.TemporaryFile("w+")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-c", "from worker.cli import main; main()", "serve",
                                      "--port", str(self.port), "--workers", str(workers)],
                                     env=env, cwd=REPO, stdout=self.log, stderr=self.log, text=True)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise SystemExit(f"the web app exited: {self.log.read()[-2000:]}")
            try:
                httpx.get(self.base + "/healthz", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise SystemExit("the web app did not answer within 60 s")

    def workers(self) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def stop(self) -> str:
        """Stops the app; returns the end of its log (gunicorn's, and any traceback)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.seek(0)
        tail = self.log.read()[-4000:]
        self.log.close()
        return tail


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


@dataclass
class Timing:
    name: str
    path: str
    status: int | None = None
    median_ms: float | None = None
    max_ms: float | None = None
    runs_ms: list[float] = field(default_factory=list)
    bytes: int | None = None
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.status is None or (self.note and not self.runs_ms):
            return self.note
        if self.status != 200:
            return "NOT BUILT (404)" if self.status == 404 else f"HTTP {self.status}"
        return "ok" if self.max_ms is not None and self.max_ms < TARGET_MS else f"over {TARGET_MS} ms"


def time_page(client: httpx.Client, name: str, path: str, runs: int, warm: int) -> tuple[Timing, str]:
    timing = Timing(name, path)
    body = ""
    # The first `warm` (one per web worker) fill the caches and are not counted. A page
    # far over the target is timed fewer times: one more run says nothing new.
    n = 0
    while n < runs + warm:
        began = time.perf_counter()
        try:
            response = client.get(path)
        except httpx.HTTPError as exc:  # e.g. gunicorn's timeout killed the worker mid-answer
            timing.note = f"no answer after {time.perf_counter() - began:.1f} s: {type(exc).__name__}"
            break
        elapsed = (time.perf_counter() - began) * 1000
        timing.status, timing.bytes, body = response.status_code, len(response.content), response.text
        if n >= warm:
            timing.runs_ms.append(round(elapsed, 1))
        if response.status_code == 404 and n == 0:
            break  # not built (yet): one look says so
        if elapsed > 20 * TARGET_MS:
            n = max(n, runs + warm - 2)
        n += 1
    if timing.runs_ms:
        timing.median_ms, timing.max_ms = round(statistics.median(timing.runs_ms), 1), max(timing.runs_ms)
    return timing, body


def next_link(body: str) -> str | None:
    """The subscribers list's link to its next page (keyset: `after=`)."""
    for href in re.findall(r'href="([^"]*)"', body):
        href = html.unescape(href)
        if "after=" in href and href.startswith("/operator/subscribers"):
            return href
    return None


def time_export(server: Server, client: httpx.Client, path: str) -> dict:
    """Time to first byte and to the last, and the web workers' resident memory meanwhile
    (sampled every 10 ms): an export that loads the whole list shows as a jump."""
    before = {pid: rss_mb(pid) for pid in server.workers()}
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for pid in server.workers():
                peak[pid] = max(peak.get(pid, 0.0), rss_mb(pid))
            done.wait(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    began = time.perf_counter()
    first = status = None
    size = lines = 0
    note = ""
    try:
        with client.stream("GET", path, timeout=600) as response:
            status = response.status_code
            for chunk in response.iter_bytes():
                if first is None:
                    first = time.perf_counter() - began
                size += len(chunk)
                lines += chunk.count(b"\n")
    except httpx.HTTPError as exc:  # cut off: by gunicorn's timeout, say
        note = f"cut off after {time.perf_counter() - began:.1f} s: {type(exc).__name__}"
    finally:
        total = time.perf_counter() - began
        done.set()
        sampler.join()
    growth = max((peak[pid] - before.get(pid, peak[pid]) for pid in peak), default=0.0)
    return {"path": path, "status": status, "first_byte_ms": round((first or total) * 1000, 1),
            "total_ms": round(total * 1000, 1), "bytes": size, "lines": lines,
            "worker_rss_before_mb": round(max(before.values(), default=0.0)),
            "worker_rss_peak_mb": round(max(peak.values(), default=0.0)),
            "worker_rss_growth_mb": round(growth, 1), "note": note}


def pages(readers: int, keys: list[str]) -> list[tuple[str, str]]:
    middle = max(readers // 2, 1)
    prefix = f"reader{middle // 10}"
    return [
        ("dashboard", "/operator"),
        ("subscribers", "/operator/subscribers"),
        ("search: address prefix", f"/operator/subscribers?q={prefix}"),
        ("search: name", "/operator/subscribers?q=Okafor"),
        ("search: substring, no match", "/operator/subscribers?q=zq_x%25q"),
        ("filter: bounced", "/operator/subscribers?status=bounced"),
        ("filter: region", "/operator/subscribers?region=KE"),
        ("subscribers, next page", ""),  # followed from the first page's link
        ("one reader", "/operator/subscribers/" + quote(f"reader{middle}@example{middle % 500}.org")),
        ("editions", "/operator/editions"),
        ("edition: newest (sending)", f"/operator/editions/{keys[-1]}"),
        ("edition: oldest", f"/operator/editions/{keys[0]}"),
        ("audit", "/operator/audit"),
    ]


def measure(url: str, readers: int, runs: int, workers: int, log) -> dict:
    from worker.store.db import create_db_engine

    engine = create_db_engine(url)
    with engine.connect() as conn:
        keys = list(conn.scalars(sa.text("SELECT key FROM editions ORDER BY created_at")))
        readers = conn.scalar(sa.text("SELECT max(id) FROM subscribers")) or readers
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({"NEWSLETTER_DATABASE_URL": url, "NEWSLETTER_SECRET_KEY": secrets.token_urlsafe(32),
                "NEWSLETTER_TIMEZONE": "UTC", "PYTHONPATH": str(REPO),
                "NEWSLETTER_BROKER_URL": os.environ.get("NEWSLETTER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15")})
    token = operator_token(env)
    server = Server(env, workers)
    results: list[Timing] = []
    try:
        with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
            for _ in range(2 * workers):  # each worker checks the token once (scrypt), then remembers it
                client.get("/operator/audit")
            first_page = ""
            for name, path in pages(readers, keys):
                if name == "subscribers, next page":
                    path = next_link(first_page) or ""
                    if not path:
                        results.append(Timing(name, "", note="no next link" if first_page else "no first page"))
                        log(f"{name:32} no next link")
                        continue
                timing, body = time_page(client, name, path, runs, workers)
                if path == "/operator/subscribers" and timing.status == 200:
                    first_page = body
                results.append(timing)
                log(f"{name:32} {timing.status}  median {timing.median_ms} ms  max {timing.max_ms} ms")
            export = time_export(server, client, "/operator/subscribers/export")
            log(f"{'export':32} {export['status']}  first byte {export['first_byte_ms']} ms  "
                f"total {export['total_ms']} ms  worker RSS +{export['worker_rss_growth_mb']} MB")
    finally:
        log_tail = server.stop()
    out = {"pages": [asdict(t) | {"verdict": t.verdict} for t in results], "export": export,
           "server": f"newsletter serve --workers {workers} (gunicorn)", "runs_per_page": runs}
    if any(t.note or (t.status or 0) >= 500 for t in results) or export["note"] or (export["status"] or 0) >= 500:
        out["server_log_tail"] = log_tail
    return out


def table(report: dict) -> str:
    lines = [f"{'page':32} {'status':>6} {'median':>9} {'max':>9}  verdict", "-" * 76]
    for t in report["pages"]:
        med = "-" if t["median_ms"] is None else f"{t['median_ms']:.0f} ms"
        top = "-" if t["max_ms"] is None else f"{t['max_ms']:.0f} ms"
        lines.append(f"{t['name']:32} {t['status'] or '-':>6} {med:>9} {top:>9}  {t['verdict']}")
    e = report["export"]
    lines.append(f"{'export (first byte / total)':32} {e['status'] or '-':>6} {e['first_byte_ms']:>6.0f} ms "
                 f"{e['total_ms']:>6.0f} ms  worker RSS {e['worker_rss_before_mb']} -> {e['worker_rss_peak_mb']} MB")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--readers", type=int, default=1_000_000)
    p.add_argument("--editions", type=int, default=50)
    p.add_argument("--database", default=DEFAULT_DATABASE)
    p.add_argument("--reuse", action="store_true", help="time the pages on the database as it is (no fill)")
    p.add_argument("--keep", action="store_true", help="leave the database in place afterwards")
    p.add_argument("--fill-only", action="store_true", help="fill, measure the size, time no page")
    p.add_argument("--runs", type=int, default=5, help="timed requests per page, after one warm-up")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")
    p.add_argument("--json", type=Path, help="also write the JSON summary to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    db = Database(args.database)
    report: dict = {"database": args.database, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                                           "kernel": platform.release()}}
    try:
        if args.reuse:
            if not db.exists():
                raise SystemExit(f"--reuse: no database {args.database}")
            report["fill"] = "reused"
            from worker.store.db import create_db_engine, upgrade_schema  # a database from an older commit

            engine = create_db_engine(db.url)
            upgrade_schema(engine)
            report["tallies_stored_on_reuse"] = store_missing_tallies(engine, log)
            engine.dispose()
        else:
            log(f"filling {args.database}: {args.readers:,} readers, {args.editions} editions")
            db.create()
            began = time.perf_counter()
            report["fill"] = fill(db.url, args.readers, args.editions, datetime.now(UTC), log)
            report["fill"]["total"] = round(time.perf_counter() - began, 1)
        with db.admin_engine.connect() as conn:
            report["postgresql"] = conn.scalar(sa.text("SHOW server_version"))
            report["postgresql_settings"] = {
                name: conn.scalar(sa.text(f"SHOW {name}")) for name in ("shared_buffers", "work_mem")}
        report["size"] = sizes(db.url)
        log(json.dumps(report["size"]))
        if not args.fill_only:
            report |= measure(db.url, args.readers, args.runs, args.workers, log)
    finally:
        if not (args.keep or args.reuse):
            db.drop()
        db.admin_engine.dispose()
    report["kept"] = args.keep or args.reuse
    out = json.dumps(report, indent=2, default=str)
    print(out)
    if args.json:
        args.json.write_text(out + "\n")
    if "pages" in report:
        log(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
