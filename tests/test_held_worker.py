"""A held week rescued end to end, as an operator meets it: a real `celery worker --beat` on
the real clock holds the week as empty (its feed is not set up yet); the feed is added and
the beat polls it; the preview shows the stories; `send --approve` hands the edition to the
worker, and every reader gets the stories stored since the hold, exactly as previewed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.support.data import add_subscribers
from tests.support.worker import WorkerProcess, wait_for
from worker.delivery.plan import find_edition
from worker.delivery.schedule import DAYS, week_for_slot
from worker.digest import week_window, weekly_edition_key
from worker.settings import load_settings
from worker.store.db import session_scope
from worker.store.models import Source

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]  # a real worker and beat: its ticks are a minute apart


def _titles(text: str) -> list[str]:
    """The story titles of a digest's text part, in order ("1. RU 2")."""
    return [line.split(". ", 1)[1] for line in text.splitlines() if line[:1].isdigit() and ". " in line]


# One database: each run waits out two of beat's minute ticks; both databases' editions
# are covered by the fast tests of approval (tests/test_held.py).
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_beat_holds_an_empty_week_and_approval_sends_the_stories_that_came_after(
        engine, smtp_server, worker_env, run_cli, tmp_path):
    # The weekly slot two minutes ago (today, in UTC): the first tick plans it, well within
    # the catch-up window. Readers in Moscow and London: their send time has passed too.
    slot = (datetime.now(UTC) - timedelta(minutes=2)).replace(second=0, microsecond=0)
    env = {**worker_env, "NEWSLETTER_TIMEZONE": "UTC", "NEWSLETTER_SEND_DAY": DAYS[slot.weekday()],
           "NEWSLETTER_SEND_TIME": f"{slot:%H:%M}"}
    settings = load_settings(env)
    week = week_for_slot(slot, settings)
    key, window = weekly_edition_key(week), week_window(week, settings.tz)
    add_subscribers(engine, 3, sets=[("RU",), ("GB",), ("GB", "RU")])
    worker = WorkerProcess(env, tmp_path / "beat.log", name="beat", extra=["--beat"]).start()
    try:
        wait_for(lambda: find_edition(engine, key), timeout=150, what=f"beat to plan {key}")
        held = find_edition(engine, key)
        assert (held.state, held.reason) == ("held", f"empty week: no stories in {week}")

        feed = tmp_path / "feed.json"
        feed.write_text(json.dumps([
            {"id": f"{region}-{n}", "url": f"https://news.example/{region}/{n}", "title": f"{region} {n}",
             "regions": [region], "published_at": (window.start + timedelta(days=4 + n, hours=9)).isoformat()}
            for region in ("RU", "GB") for n in range(3)]))
        added = run_cli("sources", "add", str(feed), env=env)
        assert added.code == 0, added.err

        def polled():
            with session_scope(engine) as session:
                source = session.query(Source).one()
                return source.last_success_at is not None and source.items_added == 6
        wait_for(polled, timeout=150, what="beat to poll the new feed")
        assert find_edition(engine, key).state == "held"  # stories arriving do not release it

        out = tmp_path / "preview"
        preview = run_cli("preview", "--week", week, "--regions", "GB,RU", "--out", str(out), env=env)
        assert preview.code == 0, preview.err
        previewed = _titles((out / "digest.txt").read_text())
        assert previewed == ["GB 2", "GB 1", "GB 0", "RU 2", "RU 1", "RU 0"]

        approved = run_cli("send", "--edition", key, "--approve", env=env)
        assert approved.code == 0, approved.err
        assert f"{key}: approved (it was held: empty week: no stories in {week}); planned again from what " \
               "is stored now: 3 deliveries" in approved.out
        wait_for(lambda: len(smtp_server.received) >= 3, timeout=120, what="the worker to send the approved week")
        got = {r.rcpt: _titles(r.message.get_body(("plain",)).get_content()) for r in smtp_server.received}
        assert got == {"reader0@example.org": ["RU 2", "RU 1", "RU 0"], "reader1@example.org": ["GB 2", "GB 1", "GB 0"],
                       "reader2@example.org": previewed}
        wait_for(lambda: find_edition(engine, key).state == "done", timeout=90, what=f"{key} done")
        status = json.loads(run_cli("status", key, "--json", env=env).out)
        assert status["counts"]["sent"] == 3 and status["counts"]["skipped"] == 0
        assert len(smtp_server.received) == 3
        assert "Traceback" not in worker.output()
    finally:
        worker.stop()
