"""worker/editions/, the one door to an edition: its decisions as values, the cheap
progress and count held to the full status, one Celery app per broker however many
editions are handed out. (What the CLI says over it: test_cli_editions.py, test_send_cli.py.)"""

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.support.data import add_subscribers, delivery_rows, load_stories
from worker import editions
from worker.delivery.status import edition_progress
from worker.editions import Decision, Released, handout
from worker.store.db import session_scope
from worker.store.models import Delivery, Edition, EditionState

KEY = "weekly-2025-W05"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)


def _plan(engine, settings, tmp_path, **options):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    target = editions.resolve_window(settings, "2025-W05", None, None)
    return editions.plan_or_reuse(engine, target, who="tester", now=NOW,
                                  **{"force": False, "retry": False, **options})


def test_an_edition_is_planned_once_then_reported_or_forced_under_a_new_key(engine, settings, tmp_path):
    planned = _plan(engine, settings, tmp_path)
    assert (planned.decision, planned.key, planned.state) == (Decision.PLANNED, KEY, EditionState.SENDING)
    # Every eighth reader follows JP, which has no story that week.
    assert (planned.status.total, planned.status.skipped, dict(planned.status.skip_reasons)) == \
        (16, 2, {"no-stories": 2})
    target = editions.resolve_window(settings, "2025-W05", None, None)
    again = editions.plan_or_reuse(engine, target, force=False, retry=False, who="tester", now=NOW)
    assert (again.decision, again.edition_id, again.status.key) == (Decision.EXISTS, None, KEY)
    forced = editions.plan_or_reuse(engine, target, force=True, retry=False, who="tester", now=NOW)
    assert (forced.decision, forced.key) == (Decision.FORCED, f"{KEY}-force-2")
    assert forced.note == f"forced re-send of {KEY} by tester at {NOW.isoformat()}"
    assert editions.original_key(forced.key) == KEY
    assert editions.resolve_edition(engine, settings, forced.key) == (target.window, forced.key, "weekly")


def test_the_cheap_progress_and_failed_count_agree_with_the_full_status(engine, settings, tmp_path):
    """--wait polls edition_progress and --retry-failed counts with one query: both say
    what the full status says, row states of every kind present."""
    planned = _plan(engine, settings, tmp_path)
    rows = sorted(d.id for d in delivery_rows(engine, KEY).values() if d.state == "pending")
    later = NOW + timedelta(hours=5)
    changes = [({"state": "sent"}, rows[0:3]), ({"state": "sending"}, rows[3:4]),
               ({"state": "failed", "next_attempt_at": later}, rows[4:6]),  # a retry scheduled
               ({"state": "failed", "next_attempt_at": None}, rows[6:7]),   # final
               ({"state": "unknown"}, rows[7:8]), ({"due_at": later}, rows[8:11])]  # their reader's hour
    with session_scope(engine) as session:
        for values, ids in changes:
            session.execute(sa.update(Delivery).where(Delivery.id.in_(ids)).values(**values))
    status = editions.status(engine, planned.edition_id)
    progress = edition_progress(engine, planned.edition_id, now=NOW)
    assert (progress.key, progress.state, progress.total) == (KEY, status.state, status.total)
    assert progress.open_rows == status.open_rows == (14 - 8) + 1 + 2  # pending, sending, retry scheduled
    assert progress.done == status.total - status.open_rows
    assert progress.waiting_for_hour == 3
    assert editions.count_failed(engine, planned.edition_id) == status.counts["failed"] == 3
    assert status.retry_scheduled == 2


def test_releasing_says_why_nothing_was_released(engine, settings, tmp_path):
    assert editions.release(engine, settings, "weekly-2031-W01", approve=True, who="tester").outcome \
        is Released.MISSING
    planned = _plan(engine, settings, tmp_path)
    refused = editions.release(engine, settings, KEY, approve=True, who="tester")
    assert (refused.outcome, refused.state, refused.done) == (Released.NOT_HELD, EditionState.SENDING, False)
    with session_scope(engine) as session:
        session.execute(sa.update(Edition).where(Edition.id == planned.edition_id)
                        .values(state=EditionState.HELD.value, reason="empty week"))
    dropped = editions.release(engine, settings, KEY, approve=False, who="tester")
    assert (dropped.outcome, dropped.held_reason, dropped.done) == (Released.DISCARDED, "empty week", True)
    assert editions.status(engine, planned.edition_id).state is EditionState.SKIPPED


def test_handing_out_keeps_one_celery_app_per_broker(engine, settings, tmp_path, redis_url, monkeypatch):
    """An app holds its broker's connection pool: the operator page approving edition after
    edition must not open one each time."""
    from worker import celery_app

    made = []
    real = celery_app.create_app
    monkeypatch.setattr(celery_app, "create_app", lambda s: made.append(s.broker_url) or real(s))
    monkeypatch.setattr(handout, "_APPS", {})
    settings = settings.model_copy(update={"broker_url": redis_url, "batch_size": 5})
    planned = _plan(engine, settings, tmp_path)
    assert editions.hand_out(engine, settings, planned.edition_id, now=NOW) == 3  # 14 rows to send
    assert editions.hand_out(engine, settings, planned.edition_id, now=NOW) == 0  # handed out just now
    assert made == [redis_url]


def test_a_broker_that_is_down_is_said_and_the_rows_stay_pending(engine, settings, tmp_path, monkeypatch):
    monkeypatch.setattr(handout, "_APPS", {})
    settings = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    planned = _plan(engine, settings, tmp_path)
    with pytest.raises(editions.BrokerUnreachable, match=r"^cannot reach the broker at redis://127.0.0.1:1/0: "):
        editions.hand_out(engine, settings, planned.edition_id, now=NOW)
    assert {d.enqueued_at for d in delivery_rows(engine, KEY).values()} == {None}
