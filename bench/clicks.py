"""The click redirect (/r/<token>) under a steady load, against /healthz in the same run.

The web app runs as in production (`newsletter serve --workers W`: gunicorn, gthread) on
PostgreSQL, with NEWSLETTER_COUNT_CLICKS=true and Redis for the scanner and flood checks.
An open-loop client sends requests at a fixed rate over keep-alive connections, each
from another reader (X-Forwarded-For, one trusted proxy) opening a story link of an
edition: every request is a first open, so each one writes its count. Latency is taken
from when a request was due, not when it was sent, so a stalled server shows in it.

The baseline is /healthz (one SELECT 1) at the same rate, in the same run: the web stack
and the database round trip without the redirect's own work. Reported per route: the rate
reached, latency percentiles, and the web processes' CPU per request.

    python bench/clicks.py                       # 1,000 requests/s for 20 s each
    python bench/clicks.py --rate 2000 --seconds 10 --workers 4 --json out.json

Needs PostgreSQL (NEWSLETTER_TEST_POSTGRES_URL, the admin connection) and Redis on
127.0.0.1; the database newsletter_bench_clicks is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench.console import Database, Server  # noqa: E402

SECRET = "bench-clicks-secret-key-0123456789abcdef"
REDIS_URL = os.environ.get("NEWSLETTER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/11")
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
STORIES = 200


def prepare(url: str) -> list[str]:
    """An edition and its stories; the paths of their click links."""
    from worker.store.db import create_db_engine, session_scope, upgrade_schema
    from worker.store.models import Edition, Story, StoryRegion
    from worker.tokens import ClickTarget, click_token

    engine = create_db_engine(url)
    upgrade_schema(engine)
    now = datetime.now(UTC)
    with session_scope(engine) as session:
        edition = Edition(key="weekly-2025-W05", kind="weekly", label="2025-W05", window_start=now - timedelta(days=7),
                          window_end=now, state="done", finished_at=now)
        session.add(edition)
        stories = [Story(guid=f"s{n}", url=f"https://news.example/stories/{n}", title=f"Story {n}",
                         published_at=now - timedelta(hours=n), regions=[StoryRegion(region="RU")])
                   for n in range(STORIES)]
        session.add_all(stories)
        session.flush()
        paths = [f"/r/{click_token(SECRET, ClickTarget(edition.id, s.id, 'RU'))}" for s in stories]
    engine.dispose()
    return paths


async def load(port: int, paths: list[str], *, rate: float, seconds: float, connections: int) -> dict:
    """Requests due every 1/rate s, each on a free keep-alive connection."""
    free: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        free.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    rng = random.Random(7)
    start = time.perf_counter() + 0.2
    total = int(rate * seconds)

    async def one(n: int, due: float) -> None:
        reader, writer = await free.get()
        path = paths[n % len(paths)]
        client = f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        writer.write(f"GET {path} HTTP/1.1\r\nHost: news.example\r\nUser-Agent: {BROWSER}\r\n"
                     f"X-Forwarded-For: {client}\r\nAccept: text/html\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        if length:
            await reader.readexactly(length)
        latencies.append(time.perf_counter() - due)
        statuses[status] = statuses.get(status, 0) + 1
        free.put_nowait((reader, writer))

    tasks = []
    for n in range(total):
        due = start + n / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(n, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    while not free.empty():
        free.get_nowait()[1].close()
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 3)

    return {"requests": total, "seconds": round(elapsed, 2), "rate": round(total / elapsed, 1),
            "statuses": statuses, "mean_ms": round(statistics.fmean(latencies) * 1000, 3),
            "p50_ms": pct(50), "p90_ms": pct(90), "p99_ms": pct(99), "max_ms": round(latencies[-1] * 1000, 3)}


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except FileNotFoundError:
            pass
    return total


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of every core, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def measure(server: Server, label: str, paths: list[str], args) -> dict:
    pids = server.workers()
    before, client_before, (busy, total) = cpu_seconds(pids), time.process_time(), machine_busy()
    result = asyncio.run(load(server.port, paths, rate=args.rate, seconds=args.seconds,
                              connections=args.connections))
    busy_after, total_after = machine_busy()
    result["web_cpu_ms_per_request"] = round((cpu_seconds(pids) - before) * 1000 / result["requests"], 3)
    result["client_cpu_ms_per_request"] = round((time.process_time() - client_before) * 1000 / result["requests"], 3)
    result["machine_busy"] = round((busy_after - busy) / max(1, total_after - total), 3)
    print(f"{label:>9}: {result['rate']:>7} req/s  mean {result['mean_ms']} ms  p50 {result['p50_ms']}  "
          f"p90 {result['p90_ms']}  p99 {result['p99_ms']}  max {result['max_ms']} ms  "
          f"web CPU {result['web_cpu_ms_per_request']} ms/request (load client {result['client_cpu_ms_per_request']}; "
          f"cores busy {result['machine_busy']:.0%})  {result['statuses']}", flush=True)
    return result


def own_work(url: str, paths: list[str], n: int = 3000) -> float:
    """ms per call of the redirect's own work, in this process: the token, the cached
    target and the Redis round trip that judges and counts (no HTTP, no Flask)."""
    from worker.clicks import ClickCounter
    from worker.store.db import create_db_engine

    engine = create_db_engine(url, create=False)
    counter = ClickCounter(engine, redis_url=REDIS_URL, secret=SECRET)
    headers = {"User-Agent": BROWSER}
    started = time.perf_counter()
    for i in range(n):
        token = paths[i % len(paths)].removeprefix("/r/")
        counter.target(token)
        counter.hear(token, client=f"192.0.2.{i % 250}/{i}", method="GET", headers=headers)
    spent = (time.perf_counter() - started) * 1000 / n
    engine.dispose()
    return round(spent, 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    database = Database("newsletter_bench_clicks")
    database.create()
    redis.Redis.from_url(REDIS_URL).flushdb()
    server = None
    try:
        paths = prepare(database.url)
        env = {**os.environ, "NEWSLETTER_DATABASE_URL": database.url, "NEWSLETTER_SECRET_KEY": SECRET,
               "NEWSLETTER_COUNT_CLICKS": "true", "NEWSLETTER_RATELIMIT_URL": REDIS_URL,
               "NEWSLETTER_BROKER_URL": REDIS_URL, "NEWSLETTER_TRUSTED_PROXIES": "1",
               "NEWSLETTER_PUBLIC_URL": "https://news.example", "NEWSLETTER_OPERATOR_TOKEN": "bench-operator"}
        server = Server(env, args.workers)
        # Warm both routes (connections, caches) before either is measured.
        asyncio.run(load(server.port, ["/healthz"] * 10 + paths, rate=500, seconds=1, connections=8))
        baseline = measure(server, "/healthz", ["/healthz"], args)
        clicks = measure(server, "/r/", paths, args)
        from worker.clicks import FLUSH_SECONDS, flush
        from worker.store.db import create_db_engine

        # What the web processes' flushers have not moved yet (they do every 2 s), once a
        # batch one of them took at the end has had its time to be written.
        time.sleep(FLUSH_SECONDS * 2)
        engine = create_db_engine(database.url, create=False)
        flush(redis.Redis.from_url(REDIS_URL), engine, SECRET)
        with engine.connect() as conn:
            counted = int(conn.scalar(sa.text("SELECT coalesce(sum(clicks), 0) FROM story_clicks")))
        engine.dispose()
        ratio = round(clicks["mean_ms"] / baseline["mean_ms"], 2)
        clicks["own_work_ms"] = own_work(database.url, paths)
        print(f"the redirect's own work, in process: {clicks['own_work_ms']} ms a request", flush=True)
        print(f"counted opens: {counted} of {clicks['requests']} measured + the warm-up's; "
              f"/r/ mean latency = {ratio} x /healthz's", flush=True)
        if args.json:
            args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "healthz": baseline,
                                             "clicks": clicks, "counted": counted, "ratio": ratio}, indent=2))
    finally:
        if server is not None:
            server.stop()
        database.drop()


if __name__ == "__main__":
    main()
