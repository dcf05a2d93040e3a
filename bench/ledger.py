"""The ledger's step alone: record the previous result and claim the next row, on
PostgreSQL, from N threads; no rendering, no SMTP. Prints the CPU per step of this
process and of PostgreSQL (all its processes), which vary much less between runs
than the end-to-end figures do.

    python bench/ledger.py [--rows 20000] [--lanes 4] [--group 1] [--separate]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sqlalchemy as sa  # noqa: E402

from bench.run import KEY, WEEK, Database, oldest, seed, tree_cpu  # noqa: E402
from worker.clock import utcnow  # noqa: E402
from worker.delivery import ledger  # noqa: E402
from worker.delivery.outcome import Outcome, SendResult  # noqa: E402
from worker.delivery.plan import plan_edition  # noqa: E402
from worker.digest import week_window  # noqa: E402
from worker.store.db import create_db_engine  # noqa: E402

SENT = SendResult(Outcome.SENT, 250, "2.0.0 Ok: queued")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--lanes", type=int, default=4)
    parser.add_argument("--group", type=int, default=1, help="rows per claim statement (the pipeline claims one)")
    parser.add_argument("--separate", action="store_true",
                        help="each lane its own statements (before group commit; the pipeline shares them)")
    args = parser.parse_args()
    db = Database()
    try:
        seed(db.url, args.rows, random.Random(1))
        engine = create_db_engine(db.url, pool_size=args.lanes)
        planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window(WEEK, ZoneInfo("UTC")),
                               now=utcnow())
        with engine.connect() as conn:
            ids = list(conn.scalars(sa.text("SELECT id FROM deliveries WHERE state = 'pending' ORDER BY id")))
        rows = ledger.lease_batch(engine, edition_id=planned.edition_id, ids=ids, worker="bench", now=utcnow(),
                                  lease=timedelta(hours=1))

        shared = None if args.separate else ledger.open_group(engine, worker="bench", max_attempts=5, retry_base=60)

        def lane(mine: list[ledger.Leased]) -> None:
            book = ledger.open_ledger(engine, worker="bench", max_attempts=5, retry_base=60, group=shared)
            for start in range(0, len(mine), args.group):
                group = [row.id for row in mine[start:start + args.group]]
                now = utcnow()
                claims = book.claim(group, now=now, lease=timedelta(minutes=5))
                for row_id in group:
                    book.record(row_id, result=SENT, message_id="<bench@news.example>",
                                attempts=claims[row_id].attempts, now=now)
            book.close()

        postgres = oldest("postgres")
        cpu, pg, wall = time.process_time(), tree_cpu(postgres), time.perf_counter()
        # Neighbouring rows go to different lanes, as in a batch.
        threads = [threading.Thread(target=lane, args=(rows[n::args.lanes],)) for n in range(args.lanes)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        cpu, pg, wall = time.process_time() - cpu, tree_cpu(postgres) - pg, time.perf_counter() - wall
        if shared is not None:
            shared.close()
        with engine.connect() as conn:
            states = dict(conn.execute(sa.text("SELECT state, count(*) FROM deliveries GROUP BY state")).all())
    finally:
        db.drop()
    n = len(rows)
    print(json.dumps({"rows": n, "lanes": args.lanes, "group": args.group, "shared": not args.separate,
                      "states": states,
                      "steps_per_second": round(n / wall), "client_cpu_ms_per_row": round(cpu / n * 1000, 3),
                      "postgres_cpu_ms_per_row": round(pg / n * 1000, 3)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
