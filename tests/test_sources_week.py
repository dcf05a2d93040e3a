"""A week with nobody at the keyboard: a feed on a local HTTP server changes over simulated
days, the reconciler's ticks (beat's task, the clock set by the test) poll it, a real
worker delivers the weekly edition planned from what was gathered. No import command."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from tests.support.data import add_subscribers
from tests.support.worker import wait_for
from tests.test_sources import Feed, feed  # noqa: F401 - the feed server fixture
from worker.celery_app import create_app, publisher
from worker.delivery.plan import find_edition
from worker.delivery.schedule import reconcile
from worker.ingest.sources import add_source
from worker.settings import load_settings
from worker.store.db import session_scope
from worker.store.models import Source, Story

pytestmark = pytest.mark.slow  # a real Celery worker process

MONDAY = datetime(2025, 1, 27, tzinfo=UTC)  # 2025-W05
SLOT = datetime(2025, 2, 3, 7, 0, 30, tzinfo=UTC)


def test_a_week_from_the_feed_to_the_inboxes(engine, feed: Feed, smtp_server, start_worker, worker_env):  # noqa: F811
    env = {**worker_env, "NEWSLETTER_FETCH_ALLOW_PRIVATE": "true", "NEWSLETTER_SOURCES_POLL_MINUTES": "30"}
    settings = load_settings(env)
    app = create_app(settings)
    add_subscribers(engine, 3, sets=[("RU",)])
    add_source(engine, feed.url, region="RU")

    def tick(at, *, weekly=False):
        return reconcile(engine, settings, publisher(app), at, weekly=weekly)

    outcomes = []
    for day in range(7):
        noon = MONDAY + timedelta(days=day, hours=12)
        if day != 3:  # nothing new on Thursday
            feed.story(day, (noon - timedelta(hours=2)).isoformat())
        outcomes += [r.outcome for r in tick(noon).polled]
        assert tick(noon + timedelta(minutes=10)).polled == []  # not due yet: no request
        outcomes += [r.outcome for r in tick(noon + timedelta(minutes=30)).polled]
        with session_scope(engine) as session:
            assert len(session.scalars(select(Story.guid)).all()) == len(feed.items)
    assert outcomes == ["read", "unchanged"] * 3 + ["unchanged", "unchanged"] + ["read", "unchanged"] * 3
    assert len(feed.requests) == 14
    assert sum("if-none-match" in r for r in feed.requests) == 13

    worker = start_worker(**{k: v for k, v in env.items() if k not in worker_env})
    due = tick(SLOT, weekly=True).due
    assert due.action == "planned" and due.key == "weekly-2025-W05"
    assert len(feed.requests) == 15 and feed.requests[-1]["if-none-match"] == feed.etag  # the last look: 304
    wait_for(lambda: len(smtp_server.received) == 3, what="three messages", timeout=60)
    wait_for(lambda: tick(SLOT + timedelta(minutes=1)).finished or
             find_edition(engine, due.key).state == "done", what="the edition done")
    assert sorted(r.rcpt for r in smtp_server.received) == [f"reader{n}@example.org" for n in range(3)]
    text = smtp_server.received[0].message.get_body(("plain",)).get_content()
    assert all(f"Story {n}" in text for n in (4, 5, 6))  # the newest, five per region by default
    with session_scope(engine) as session:
        source = session.scalar(select(Source))
        assert (source.items_added, source.consecutive_failures) == (6, 0)
    assert "Traceback" not in worker.output()
