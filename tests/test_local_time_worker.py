"""Each reader's morning with a real Celery worker: beat-like reconciler ticks with the clock
set by the test hand out only the rows whose hour has come; the worker delivers them over SMTP."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from tests.support.data import load_stories
from tests.support.worker import wait_for
from tests.test_local_time import READERS, add_readers
from worker.celery_app import create_app, publisher
from worker.delivery.plan import find_edition
from worker.delivery.schedule import reconcile
from worker.settings import load_settings

pytestmark = pytest.mark.slow  # a real Celery worker process


def test_a_real_worker_delivers_each_zone_at_its_hour(engine, smtp_server, start_worker, worker_env, tmp_path):
    env = {**worker_env, "NEWSLETTER_TIMEZONE": "Europe/Berlin"}
    settings = load_settings(env)
    app = create_app(settings)
    load_stories(engine, tmp_path)
    add_readers(engine)
    worker = start_worker(NEWSLETTER_TIMEZONE="Europe/Berlin")

    def tick(*at):
        return reconcile(engine, settings, publisher(app), datetime(*at, tzinfo=UTC), sources=False)

    def received() -> set[str]:
        return {r.rcpt for r in smtp_server.received}

    def settled(expected: set[str]) -> None:
        wait_for(lambda: received() == expected, what=f"mail for {sorted(expected)}", timeout=60)
        time.sleep(1)  # and nothing more arrives (a batch for a row not yet due would land by now)
        assert received() == expected and len(smtp_server.received) == len(expected)

    assert tick(2025, 2, 2, 17, 59).batches == 0
    assert tick(2025, 2, 2, 22, 59).batches == 0  # Auckland's morning, but Berlin's week has not ended
    assert tick(2025, 2, 2, 23, 0).due.action == "planned"
    settled({"akl@example.org"})
    assert tick(2025, 2, 3, 3, 59).batches == 0
    tick(2025, 2, 3, 4, 0)
    settled({"akl@example.org", "ru@example.org"})
    tick(2025, 2, 3, 6, 0)
    settled({"akl@example.org", "ru@example.org", "ber@example.org", "bv@example.org"})
    assert tick(2025, 2, 3, 14, 59).batches == 0 and find_edition(engine, "weekly-2025-W05").state == "sending"
    tick(2025, 2, 3, 15, 0)
    settled(set(READERS))
    wait_for(lambda: tick(2025, 2, 3, 15, 1).finished or find_edition(engine, "weekly-2025-W05").state == "done",
             what="the edition done")
    assert "Traceback" not in worker.output()
