"""/metrics as an operator reads it after a real send: the ledger, editions, held editions,
sources and late bounces, each equal to what the database holds, and the scrape bounded."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.support.data import add_subscribers, load_stories
from worker.delivery.pipeline import run_inline
from worker.delivery.plan import plan_edition
from worker.delivery.senders import SmtpSender
from worker.digest import week_window
from worker.ingest.sources import add_source
from worker.metrics import RECENT_EDITIONS
from worker.store.db import session_scope
from worker.store.models import BounceEvent, Delivery, DeliveryState, Edition, EditionState, Source
from worker.web import create_app

LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}
TOKEN = "metrics-scraper-token"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)


def _get_metrics(engine, settings):
    """/metrics as a scraper asks: the operator token as a Bearer token (never loopback trust)."""
    app = create_app(settings.model_copy(update={"operator_token": SecretStr(TOKEN)}), engine)
    app.testing = True
    return app.test_client().get("/metrics", environ_base=LOOPBACK, headers={"Authorization": f"Bearer {TOKEN}"})


def _scrape(engine, settings) -> dict[str, dict[tuple, float]]:
    """name -> {sorted label items: value}, parsed by prometheus-client's own parser."""
    page = _get_metrics(engine, settings)
    assert page.status_code == 200
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(page.text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _by(samples: dict[tuple, float], label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples.items()}


def _table(engine, column) -> dict[str, int]:
    with session_scope(engine) as session:
        return dict(session.execute(sa.select(column, sa.func.count()).group_by(column)).all())


def test_a_finished_edition_and_a_held_one_are_scraped_as_the_database_holds_them(engine, smtp_settings,
                                                                                 smtp_server, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 12)
    smtp_server.plan.rcpt["reader3@example.org"] = "550 5.1.1 no such mailbox"
    window = week_window("2025-W05", smtp_settings.tz)
    sent = plan_edition(engine, key="weekly-2025-W05", kind="weekly", window=window, now=NOW)
    sender = SmtpSender(smtp_settings)
    try:
        run_inline(engine, smtp_settings, sent.edition_id, sender)
    finally:
        sender.close()
    held = plan_edition(engine, key="weekly-2025-W06", kind="weekly", window=week_window("2025-W06", smtp_settings.tz),
                        now=NOW + timedelta(days=7), hold="empty week: no stories in 2025-W06")

    scraped = _scrape(engine, smtp_settings)

    ledger = _table(engine, Delivery.state)
    assert ledger["sent"] == len(smtp_server.received) > 0 and ledger["bounced"] == 1  # a real send happened
    totals = _by(scraped["newsletter_deliveries"], "state")
    assert set(totals) == {s.value for s in DeliveryState}
    assert {state: int(n) for state, n in totals.items() if n} == ledger
    editions = _by(scraped["newsletter_editions"], "state")
    assert set(editions) == {s.value for s in EditionState}
    assert {state: int(n) for state, n in editions.items() if n} == _table(engine, Edition.state) == \
        {"done": 1, "held": 1}
    assert scraped["newsletter_editions_held"][()] == 1
    assert scraped["newsletter_edition_held"] == {(("edition", "weekly-2025-W06"),): 1}
    per_edition = scraped["newsletter_ledger_rows"]
    assert sum(v for labels, v in per_edition.items() if dict(labels)["edition"] == "weekly-2025-W06") == \
        held_rows(engine, held.edition_id) > 0
    assert scraped["newsletter_ledger_up"][()] == 1

    # Approved: no longer held, and the gauge says so at the next scrape.
    with session_scope(engine) as session:
        session.execute(sa.update(Edition).where(Edition.id == held.edition_id).values(state="sending"))
    again = _scrape(engine, smtp_settings)
    assert again["newsletter_editions_held"][()] == 0 and "newsletter_edition_held" not in again


def held_rows(engine, edition_id: int) -> int:
    with session_scope(engine) as session:
        return session.scalar(sa.select(sa.func.count()).where(Delivery.edition_id == edition_id))


def test_sources_are_labelled_by_id_with_failures_and_last_success(engine, settings):
    good = add_source(engine, "https://feeds.example/ru.xml", region="RU")
    bad = add_source(engine, "https://user:secret@feeds.example/private.xml?key=topsecret")
    success = datetime(2025, 2, 2, 12, 30, tzinfo=UTC)
    with session_scope(engine) as session:
        session.execute(sa.update(Source).where(Source.id == good.id).values(last_success_at=success))
        session.execute(sa.update(Source).where(Source.id == bad.id).values(consecutive_failures=3,
                                                                           last_error="HTTP 401"))
    long = add_source(engine, "https://feeds.example/" + "a" * 300 + "\n\t.xml#frag")
    scraped = _scrape(engine, settings)
    feeds = {str(good.id): "https://feeds.example/ru.xml", str(bad.id): "https://feeds.example/private.xml",
             str(long.id): "https://feeds.example/" + "a" * 77 + "…"}
    failures = scraped["newsletter_source_consecutive_failures"]
    assert failures == {(("feed", feeds[str(good.id)]), ("source", str(good.id))): 0,
                        (("feed", feeds[str(bad.id)]), ("source", str(bad.id))): 3,
                        (("feed", feeds[str(long.id)]), ("source", str(long.id))): 0}
    assert _by(scraped["newsletter_source_last_success_timestamp_seconds"], "source") == \
        {str(good.id): success.timestamp(), str(bad.id): 0, str(long.id): 0}
    assert scraped["newsletter_sources_up"][()] == 1
    text = _get_metrics(engine, settings).text
    assert "secret" not in text and "user" not in text and "key=" not in text


def test_late_bounces_are_counted_per_edition_and_kind(engine, settings, tmp_path):
    load_stories(engine, tmp_path)
    rows = add_subscribers(engine, 3)
    planned = plan_edition(engine, key="weekly-2025-W05", kind="weekly",
                           window=week_window("2025-W05", settings.tz), now=NOW)
    with session_scope(engine) as session:
        for n, kind in enumerate(["permanent", "permanent", "complaint", "<b>made-up</b>"]):
            session.add(BounceEvent(fingerprint=f"f{n}", kind=kind, source="dsn", edition_id=planned.edition_id,
                                    subscriber_id=rows[n % 3][0], received_at=NOW))
    scraped = _scrape(engine, settings)
    assert scraped["newsletter_late_bounces"] == {
        (("edition", "weekly-2025-W05"), ("kind", "complaint")): 1,
        (("edition", "weekly-2025-W05"), ("kind", "other")): 1,
        (("edition", "weekly-2025-W05"), ("kind", "permanent")): 2,
    }
    assert scraped["newsletter_bounces_up"][()] == 1


def test_the_scrape_lists_the_recent_editions_and_every_unfinished_one(engine, settings):
    add_subscribers(engine, 2)
    for n in range(RECENT_EDITIONS + 5):
        week = f"2024-W{n + 1:02d}"
        planned = plan_edition(engine, key=f"weekly-{week}", kind="weekly", window=week_window(week, settings.tz),
                               now=NOW + timedelta(days=n), hold="review mode" if n == 0 else None)
        if n:
            with session_scope(engine) as session:
                session.execute(sa.update(Edition).where(Edition.id == planned.edition_id).values(state="done"))
    scraped = _scrape(engine, settings)
    listed = {dict(labels)["edition"] for labels in scraped["newsletter_ledger_rows"]}
    # The oldest is held: listed whatever its age; of the rest, the 20 created last.
    assert listed == {"weekly-2024-W01"} | {f"weekly-2024-W{n + 1:02d}" for n in range(5, RECENT_EDITIONS + 5)}
    assert len(scraped["newsletter_ledger_rows"]) == len(listed) * len(DeliveryState)
    assert _by(scraped["newsletter_editions"], "state")["done"] == RECENT_EDITIONS + 4  # counted, all of them


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_missing_bounces_table_is_its_own_zero(engine, settings):
    plan_edition(engine, key="weekly-2025-W05", kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE bounce_events")
    scraped = _scrape(engine, settings)
    assert scraped["newsletter_bounces_up"][()] == 0
    assert scraped["newsletter_ledger_up"][()] == 1 and scraped["newsletter_sources_up"][()] == 1


def test_a_feed_label_keeps_no_credentials_and_no_control_characters():
    from worker.metrics import feed_label

    assert feed_label("https://u:p@feeds.example:8443/x.xml?token=t#f") == "https://feeds.example:8443/x.xml"
    assert feed_label("https://feeds.example/a\nb\x1b[31m") == "https://feeds.example/ab[31m"
    assert feed_label("http://feeds.example:99999/x") == "unparsable"
    assert feed_label("/srv/feeds/world.json") == "/srv/feeds/world.json"
