"""The web app's /metrics: operator-only, and the ledger's rows by state read at scrape time."""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.support.web import LOOPBACK, REMOTE, web_client
from worker.delivery.plan import plan_edition
from worker.digest import week_window
from worker.store.db import session_scope
from worker.store.models import Delivery, DeliveryState, Edition
from worker.web import create_app

TOKEN = "metrics-operator-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}




def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _rows(samples, edition):
    return {dict(labels)["state"]: value for (name, labels), value in samples.items()
            if name == "newsletter_ledger_rows" and dict(labels)["edition"] == edition}


def test_metrics_is_an_operator_page(sample_engine, settings):
    client = web_client(sample_engine, settings)
    assert client.get("/metrics", environ_base=REMOTE).status_code == 403
    # A machine route: no token set means nobody, loopback included (test_web_auth.py).
    assert client.get("/metrics", environ_base=LOOPBACK).status_code == 403
    assert client.get("/metrics", environ_base=LOOPBACK, headers={"Host": "127.0.0.1:8000"}).status_code == 403

    guarded = web_client(sample_engine, settings, TOKEN)
    for environ in (REMOTE, LOOPBACK):
        assert guarded.get("/metrics", environ_base=environ).status_code == 401
        assert guarded.get("/metrics", environ_base=environ, headers={"Authorization": "Bearer wrong"}).status_code == 401
    opened = guarded.get("/metrics", environ_base=REMOTE, headers={"Authorization": f"Bearer {TOKEN}"})
    assert opened.status_code == 200 and opened.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert opened.headers["Cache-Control"] == "no-store"


def test_ledger_rows_by_state_are_counted_when_scraped(sample_engine, settings):
    now = datetime.now(UTC)
    window = week_window("2025-W05", settings.tz)
    live = plan_edition(sample_engine, key="weekly-2025-W05", kind="weekly", window=window, now=now)
    old = plan_edition(sample_engine, key="weekly-2025-W04", kind="weekly", window=week_window("2025-W04", settings.tz),
                       now=now - timedelta(days=30))
    with session_scope(sample_engine) as session:
        session.execute(sa.update(Edition).where(Edition.id == old.edition_id).values(state="done"))
    client = web_client(sample_engine, settings, TOKEN)

    with session_scope(sample_engine) as session:
        counts = dict(session.execute(sa.select(Delivery.state, sa.func.count()).where(
            Delivery.edition_id == live.edition_id).group_by(Delivery.state)).all())
    first = _samples(client.get("/metrics", headers=BEARER).text)
    assert first[("newsletter_ledger_up", ())] == 1
    rows = _rows(first, "weekly-2025-W05")
    # Every state is there, zeros included, so a series never vanishes mid-edition.
    assert set(rows) == {s.value for s in DeliveryState}
    assert {k: v for k, v in rows.items() if v} == counts and sum(rows.values()) > 0
    # Finished a month ago, but among the editions created last: its final counts stay visible
    # (test_metrics_state.py holds the bound).
    assert sum(_rows(first, "weekly-2025-W04").values()) > 0

    # Read at each scrape, not cached: rows that move are seen moving.
    with session_scope(sample_engine) as session:
        session.execute(sa.update(Delivery).where(Delivery.edition_id == live.edition_id,
                                                  Delivery.state == "pending").values(state="sent"))
    second = _rows(_samples(client.get("/metrics", headers=BEARER).text), "weekly-2025-W05")
    assert second["pending"] == 0 and second["sent"] == counts.get("pending", 0) + counts.get("sent", 0)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_an_unreadable_ledger_is_a_zero_not_an_error(settings, tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'nothing-here' / 'no.db'}")
    app = create_app(settings.model_copy(update={"operator_token": SecretStr(TOKEN)}), engine)
    app.testing = True
    page = app.test_client().get("/metrics", headers=BEARER)
    assert page.status_code == 200
    samples = _samples(page.text)
    assert samples[("newsletter_ledger_up", ())] == 0
    assert not any(name == "newsletter_ledger_rows" for name, _ in samples)
