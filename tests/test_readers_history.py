"""Every change kept with when and how, shown by `subscribers show`; `export` prints all we
hold; `remove --purge` leaves nothing of a reader, ledger rows included; migration 0008
keeps the ledger on SQLite, where rebuilding the subscribers table would have cascaded."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic import command

from tests.conftest import EXAMPLES
from worker.delivery import pipeline
from worker.delivery.outcome import Outcome, SendResult
from worker.delivery.pipeline import run_inline
from worker.delivery.plan import plan_edition
from worker.delivery.senders import MemorySender
from worker.digest import week_window
from worker.store.db import _alembic_config, create_db_engine, current_revision, session_scope, upgrade_schema
from worker.store.models import Delivery, Edition, Subscriber, SubscriberEvent

ANNA = "anna.petrova@example.org"


@pytest.fixture
def loaded(run_cli):
    assert run_cli("db", "upgrade").code == 0
    assert run_cli("stories", "import", str(EXAMPLES / "stories.json")).code == 0
    assert run_cli("subscribers", "import", str(EXAMPLES / "subscribers.csv")).code == 0
    return run_cli


def _send_week(engine, settings, week, sender):
    pipeline._RENDERERS.clear()
    planned = plan_edition(engine, key=f"weekly-{week}", kind="weekly", window=week_window(week, settings.tz),
                           now=datetime(2025, 2, 3, 7, tzinfo=UTC))
    run_inline(engine, settings, planned.edition_id, sender)
    return planned


def test_show_answers_why_someone_did_or_did_not_get_an_edition(loaded, engine, settings):
    assert loaded("subscribers", "add", ANNA, "--regions", "UA").code == 0
    _send_week(engine, settings, "2025-W05", MemorySender())
    assert loaded("subscribers", "remove", ANNA).code == 0
    _send_week(engine, settings, "2025-W06", MemorySender())
    result = loaded("subscribers", "show", "Anna.Petrova@example.org")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == ANNA and lines[2].startswith("  status:   unsubscribed since ")
    history = [line.split() for line in lines if line.startswith("20") and "UTC" in line[:25]]
    # when (3 words), what, how, by ("cli (user)": 2 words), status
    assert [row[3:5] + row[7:8] for row in history[:3]] == [
        ["subscribed", "import", "active"], ["regions-changed", "cli", "active"],
        ["unsubscribed", "cli", "unsubscribed"]]
    assert all(row[5] == "cli" and row[6].startswith("(") for row in history[:3])
    editions = {line.split()[0]: line for line in lines if line.startswith("weekly-")}
    assert " sent " in editions["weekly-2025-W05"] and " UA " in editions["weekly-2025-W05"]
    assert "weekly-2025-W06" not in editions  # planned after they left: no row at all
    as_json = json.loads(loaded("subscribers", "show", ANNA, "--json").out)
    assert as_json["status"] == "unsubscribed" and as_json["regions"] == ["UA"]
    assert [(e["kind"], e["via"]) for e in as_json["history"]] == [
        ("subscribed", "import"), ("regions-changed", "cli"), ("unsubscribed", "cli")]
    assert as_json["deliveries"][0]["edition"] == "weekly-2025-W05" and as_json["deliveries"][0]["state"] == "sent"


def test_a_refusal_at_send_shows_in_the_history_with_its_codes_and_the_reply_in_the_ledger(loaded, engine,
                                                                                           settings):
    refusing = MemorySender(failures={ANNA: SendResult(Outcome.PERMANENT, 550, "5.1.1 no such user")})
    _send_week(engine, settings, "2025-W05", refusing)
    record = json.loads(loaded("subscribers", "show", ANNA, "--json").out)
    assert record["status"] == "bounced"
    bounced = record["history"][-1]
    assert (bounced["kind"], bounced["via"], bounced["status"], bounced["note"]) == (
        "bounced", "refused-at-send", "bounced", "refused at send 550 5.1.1")
    row = record["deliveries"][0]
    assert (row["edition"], row["state"], row["last_reply"]) == ("weekly-2025-W05", "bounced", "550 5.1.1 no such user")
    assert bounced["at"] == row["updated_at"] == record["status_changed_at"]


def test_show_and_export_of_an_unknown_or_malformed_address(loaded):
    assert loaded("subscribers", "show", "nobody@example.org").code == 1
    assert loaded("subscribers", "export", "nobody@example.org").err == "error: no subscriber 'nobody@example.org'\n"
    assert loaded("subscribers", "show", "not an address").code == 2


def test_export_holds_everything_and_purge_leaves_nothing(loaded, engine, settings):
    _send_week(engine, settings, "2025-W05", MemorySender())
    exported = json.loads(loaded("subscribers", "export", ANNA).out)
    assert exported["email"] == ANNA and exported["name"] == "Anna Petrova"
    assert exported["deliveries"][0]["message_id"] and exported["history"]
    assert "Redis" in exported["also"]
    with session_scope(engine) as session:
        anna_id = session.scalar(sa.select(Subscriber.id).where(Subscriber.email_key == ANNA))
        total = session.scalar(sa.select(Edition.total))
    assert loaded("subscribers", "remove", ANNA, "--purge").code == 0
    with session_scope(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Delivery)
                              .where(Delivery.subscriber_id == anna_id)) == 0
        assert session.scalar(sa.select(sa.func.count()).select_from(SubscriberEvent)
                              .where(SubscriberEvent.subscriber_id == anna_id)) == 0
        assert session.scalar(sa.select(Edition.total)) == total
        replies = " ".join(r or "" for r in session.scalars(sa.select(Delivery.last_reply)))
    assert ANNA not in replies
    assert loaded("subscribers", "show", ANNA).code == 1


def test_list_pending_and_expire(loaded, engine, settings):
    from worker.readers.signup import request_subscription
    from worker.readers.subscribers import make_input
    from worker.store.models import ChangeVia

    request_subscription(engine, make_input("new@example.org", None, "RU"), via=ChangeVia.FORM,
                         now=datetime(2020, 1, 1, tzinfo=UTC))
    listed = loaded("subscribers", "list", "--status", "pending", "--json")
    assert [json.loads(line)["email"] for line in listed.out.splitlines()] == ["new@example.org"]
    shown = loaded("subscribers", "show", "new@example.org")
    assert "status:   pending" in shown.out and "confirmation link: mailed 2020-01-01 00:00 UTC for RU" in shown.out
    assert loaded("subscribers", "expire").out == "1 unconfirmed sign-ups older than 7 days deleted\n"
    assert loaded("subscribers", "show", "new@example.org").code == 1


def test_migration_0008_keeps_the_ledger_and_goes_back(db_url):
    engine = create_db_engine(db_url)
    cfg = _alembic_config(engine)
    command.downgrade(cfg, "0007")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO subscribers (email, email_key, regions, status, created_at, updated_at) "
                             "VALUES ('a@example.org', 'a@example.org', 'RU', 'active', :t, :t)"), {"t": datetime(2025, 1, 1)})
        conn.execute(sa.text("INSERT INTO editions (key, kind, label, window_start, window_end, state, total, "
                             "created_at) VALUES ('k', 'weekly', 'l', :t, :t, 'done', 1, :t)"), {"t": datetime(2025, 1, 1)})
        conn.execute(sa.text("INSERT INTO deliveries (edition_id, subscriber_id, regions, state, attempts, updated_at) "
                             "SELECT e.id, s.id, 'RU', 'sent', 1, :t FROM editions e, subscribers s"),
                     {"t": datetime(2025, 1, 1)})
    assert upgrade_schema(engine) == ("0007", current_revision(engine))
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar() == 1
        conn.execute(sa.text("UPDATE subscribers SET status = 'pending'"))
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE subscribers SET status = 'gone'"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE subscribers SET status = 'active'"))
    command.downgrade(cfg, "0007")
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar() == 1
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE subscribers SET status = 'pending'"))
    upgrade_schema(engine)
    engine.dispose()
