"""The per-message Python path in one thread, stage by stage: compose a row's message,
send it to smtp-sink, claim and record its row (PostgreSQL, no group). Prints the
thread CPU per message of each stage, with nothing else competing for the GIL, to set
beside the pipeline's own stage figures (bench/run.py), which carry the lanes' contention
too; with --profile, cProfile's top functions of each stage.

    python bench/hotpath.py [--rows 5000] [--profile] [--top 15]

Needs PostgreSQL on 127.0.0.1 and Postfix's smtp-sink, as bench/run.py does.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import random
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench.run import KEY, WEEK, Database, Sink, seed  # noqa: E402
from worker.delivery import ledger  # noqa: E402
from worker.delivery.outcome import Outcome  # noqa: E402
from worker.delivery.pipeline import renderer_for, utcnow  # noqa: E402
from worker.delivery.plan import find_edition, plan_edition  # noqa: E402
from worker.delivery.senders import Outgoing  # noqa: E402
from worker.delivery.smtp import SmtpSender  # noqa: E402
from worker.digest import week_window  # noqa: E402
from worker.render.compose import Addressee, compose  # noqa: E402
from worker.settings import load_settings  # noqa: E402
from worker.store.db import create_db_engine  # noqa: E402


class Stages:
    """Thread CPU per stage, and cProfile's view of each when asked."""

    def __init__(self, *, profile: bool) -> None:
        self.cpu: dict[str, float] = {}
        self.profiles: dict[str, cProfile.Profile] = {}
        self.profile = profile

    @contextmanager
    def stage(self, name: str):
        profiler = self.profiles.setdefault(name, cProfile.Profile()) if self.profile else None
        started = time.thread_time()
        if profiler:
            profiler.enable()
        try:
            yield
        finally:
            if profiler:
                profiler.disable()
            self.cpu[name] = self.cpu.get(name, 0.0) + time.thread_time() - started

    def top(self, name: str, count: int) -> str:
        out = io.StringIO()
        pstats.Stats(self.profiles[name], stream=out).sort_stats("tottime").print_stats(count)
        return out.getvalue()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="also cProfile each stage (slower: compare shares)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    db, sink = Database(), Sink()
    try:
        seed(db.url, args.rows, random.Random(1))
        settings = load_settings({
            "NEWSLETTER_DATABASE_URL": db.url, "NEWSLETTER_SECRET_KEY": "bench", "NEWSLETTER_EMAIL_BACKEND": "smtp",
            "NEWSLETTER_SMTP_HOST": "127.0.0.1", "NEWSLETTER_SMTP_PORT": str(sink.port),
            "NEWSLETTER_FROM": "Melange News <digest@news.example>", "NEWSLETTER_PUBLIC_URL": "https://news.example",
            "NEWSLETTER_SMTP_MAX_PER_CONNECTION": "100000"})
        engine = create_db_engine(db.url)
        planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window(WEEK, ZoneInfo("UTC")),
                               now=utcnow())
        with engine.connect() as conn:
            ids = list(conn.scalars(sa.text("SELECT id FROM deliveries ORDER BY id")))
        rows = ledger.lease_batch(engine, edition_id=planned.edition_id, ids=ids, worker="bench", now=utcnow(),
                                  lease=timedelta(hours=1))
        renderer = renderer_for(engine, settings, find_edition(engine, KEY))
        for row in rows:  # every region set rendered first: this is the per-message path only
            renderer.variant(row.regions)
        secret, envelope_from = settings.require_secret_key(), settings.sender.addr_spec
        stages = Stages(profile=args.profile)
        sender = SmtpSender(settings)
        book = ledger.open_ledger(engine, worker="bench", max_attempts=5, retry_base=60)
        sent = 0
        for row in rows:
            with stages.stage("variant lookup"):
                variant = renderer.variant(row.regions)
            if variant is None:
                continue
            with stages.stage("compose"):
                composed = compose(variant, Addressee(row.email, row.name, row.subscriber_id, row.link_key),
                                   settings=settings, secret=secret)
            with stages.stage("ledger"):
                claim = book.claim([row.id], now=utcnow(), lease=timedelta(minutes=5))[row.id]
            with stages.stage("smtp"):
                result = sender.send(Outgoing(sender=envelope_from, recipient=composed.envelope_to,
                                              data=composed.data, message_id=composed.message_id,
                                              smtputf8=composed.smtputf8))
            with stages.stage("ledger"):
                book.record(row.id, result=result, message_id=composed.message_id, attempts=claim.attempts,
                            now=utcnow())
            sent += result.outcome is Outcome.SENT
        with stages.stage("ledger"):
            book.close()
        sender.close()
    finally:
        sink.stop()
        db.drop()
    report = {"rows": len(rows), "sent": sent, "profiled": args.profile,
              "thread_cpu_ms_per_message": {k: round(v / max(sent, 1) * 1000, 4) for k, v in stages.cpu.items()}}
    print(json.dumps(report, indent=2))
    if args.profile:
        for name in stages.profiles:
            print(f"\n== {name}\n{stages.top(name, args.top)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
