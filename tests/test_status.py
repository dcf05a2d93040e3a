"""`newsletter status EDITION` says where every open or failed row is: why rows failed,
which worker holds which rows and whether it is alive, what waits for the broker."""

import json
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from tests.support.data import delivery_rows
from worker.delivery import ledger, liveness
from worker.delivery.plan import find_edition
from worker.store.db import session_scope
from worker.store.models import Delivery

KEY = "weekly-2025-W05"
BUSY = "451 4.3.0 mailbox busy"
GONE = "550 5.1.1 no such user"


def _make_due(engine, email):
    row = delivery_rows(engine, KEY)[email]
    with session_scope(engine) as session:
        session.execute(sa.update(Delivery).where(Delivery.id == row.id)
                        .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1)))


def test_it_groups_failed_rows_by_reply_final_apart_from_retry_scheduled(cli, smtp_server, engine):
    smtp_server.plan.rcpt.update({"reader0@example.org": BUSY, "reader8@example.org": BUSY,
                                  "reader1@example.org": GONE})
    slow_retry = {"NEWSLETTER_MAX_ATTEMPTS": "2", "NEWSLETTER_RETRY_BASE_SECONDS": "3600"}
    assert cli("send", "--week", "2025-W05", "--inline", **slow_retry).code == 1
    # reader0's retry comes due and fails again: its row is final; reader8's still waits.
    _make_due(engine, "reader0@example.org")
    again = cli("send", "--edition", KEY, "--inline", **slow_retry)
    assert again.code == 1, again.err

    data = json.loads(cli("status", KEY, "--json").out)
    groups = data["failures"]["groups"]
    assert [(g["state"], g["reply"], g["count"], g["final"]) for g in groups] == [
        ("bounced", GONE, 1, True),
        ("failed", BUSY, 1, False),
        ("failed", BUSY, 1, True),
    ]
    retry = groups[1]
    in_an_hour = datetime.fromisoformat(retry["retry_from"]) - datetime.now(UTC)
    assert timedelta(minutes=25) < in_an_hour < timedelta(minutes=95)  # 3600 s with jitter [0.5, 1.5)
    assert groups[2]["attempts"] == 2 and data["failures"]["other_rows"] == 0

    text = cli("status", KEY).out
    assert f"  failed: 1 × {BUSY} (retry at " in text
    assert f"  failed: 1 × {BUSY} (final, after 2 attempts)" in text
    assert f"  bounced: 1 × {GONE} (final)" in text
    assert f"  1 failed for good: `newsletter send --edition {KEY} --retry-failed` tries them again" in text


def test_it_shows_rows_held_by_each_worker_alive_dead_or_unknown(cli, engine, redis_url):
    result = cli("send", "--week", "2025-W05", NEWSLETTER_BROKER_URL=redis_url, NEWSLETTER_BATCH_SIZE="4")
    assert result.code == 0, result.err
    edition = find_edition(engine, KEY)
    pending = sorted(d.id for d in delivery_rows(engine, KEY).values() if d.state == "pending")
    assert len(pending) == 14
    now = datetime.now(UTC)
    lease = timedelta(seconds=900)
    liveness.heartbeat(engine, "host-a:1", now)
    liveness.heartbeat(engine, "host-b:2", now - timedelta(minutes=5))  # stopped beating
    for name, ids in [("host-a:1", pending[0:4]), ("host-b:2", pending[4:7]), ("gone:3", pending[7:9])]:
        assert len(ledger.lease_batch(engine, edition_id=edition.id, ids=ids, worker=name, now=now,
                                      lease=lease)) == len(ids)

    data = json.loads(cli("status", KEY, "--json").out)
    held = {w["worker"]: (w["status"], w["alive"], w["rows"], w["lease_expired"]) for w in data["leases"]}
    assert held == {"host-a:1": ("alive", True, 4, False), "host-b:2": ("dead", False, 3, False),
                    "gone:3": ("unknown", False, 2, False)}
    assert datetime.fromisoformat(data["leases"][0]["lease_until"]) == now + lease

    text = cli("status", KEY).out
    assert "  held by worker host-a:1 (alive): 4 rows; lease until " in text
    assert "  held by worker host-b:2 (dead: no heartbeat within NEWSLETTER_LIVENESS_SECONDS): 3 rows" in text
    assert "  held by worker gone:3 (unknown: no heartbeat on record): 2 rows" in text


def test_it_shows_rows_waiting_for_a_worker_and_when_they_are_handed_out_again(cli, engine, redis_url):
    before = datetime.now(UTC)
    result = cli("send", "--week", "2025-W05", NEWSLETTER_BROKER_URL=redis_url, NEWSLETTER_BATCH_SIZE="4",
                 NEWSLETTER_REDISPATCH_SECONDS="300")
    assert result.code == 0, result.err
    assert "enqueued 4 batches" in result.out

    data = json.loads(cli("status", KEY, "--json", NEWSLETTER_REDISPATCH_SECONDS="300").out)
    waiting = data["awaiting_broker"]
    assert waiting["rows"] == 14
    again = datetime.fromisoformat(waiting["redispatch_from"])
    assert before + timedelta(seconds=300) <= again <= datetime.now(UTC) + timedelta(seconds=300)
    assert waiting["redispatch_until"] >= waiting["redispatch_from"]
    text = cli("status", KEY, NEWSLETTER_REDISPATCH_SECONDS="300").out
    assert "  14 rows handed to the broker, not yet taken by a worker; if none takes them, handed out again " in text
    assert "(NEWSLETTER_REDISPATCH_SECONDS)" in text


def test_json_keeps_every_existing_key_and_adds_the_new_ones(cli):
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    data = json.loads(cli("status", KEY, "--json").out)
    old = {"edition", "label", "state", "reason", "note", "window", "created_at", "finished_at", "total", "counts",
           "retry_scheduled", "skip_reasons", "smtp_codes", "unknown"}
    assert old <= set(data)
    assert data["failures"] == {"groups": [], "other_rows": 0}
    assert data["leases"] == []
    assert data["awaiting_broker"]["rows"] == 0
    assert data["smtp_codes"] == {"sent 250": 14}


def test_unknown_rows_beyond_the_listed_ones_are_counted(cli, engine):
    """The list stops at 50 rows; the count of the rest is never left out."""
    from tests.support.data import add_subscribers

    add_subscribers(engine, 60, prefix="more")
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE deliveries SET state = 'unknown', last_reply = 'worker died during the SMTP "
                             "transaction' WHERE state = 'sent'"))
        unknown = conn.execute(sa.text("SELECT count(*) FROM deliveries WHERE state = 'unknown'")).scalar()
    assert unknown > 50
    data = json.loads(cli("status", KEY, "--json").out)
    assert (len(data["unknown"]), data["unknown_more"]) == (50, unknown - 50)
    assert f"  ... and {unknown - 50} more unknown rows" in cli("status", KEY).out
