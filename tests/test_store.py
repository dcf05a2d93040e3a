from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from worker.store.db import (
    create_db_engine,
    current_revision,
    head_revision,
    session_scope,
    upgrade_schema,
)
from worker.store.models import Story, StoryRegion


def test_upgrade_is_idempotent(db_url):
    engine = create_db_engine(db_url)
    before, after = upgrade_schema(engine)
    assert before == after == head_revision()
    assert upgrade_schema(engine) == (head_revision(), head_revision())
    assert current_revision(engine) == head_revision()


def test_upgrade_creates_schema_from_empty_sqlite(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'sub' / 'fresh.db'}")
    assert upgrade_schema(engine) == (None, head_revision())
    names = set(sa.inspect(engine).get_table_names())
    assert {"stories", "story_regions", "subscribers", "alembic_version"} <= names


def test_datetimes_come_back_aware_utc(engine):
    moment = datetime(2025, 1, 27, 1, 30, tzinfo=timezone(timedelta(hours=3)))
    with session_scope(engine) as session:
        story = Story(guid="g", url="https://x.example/", title="t", summary_html="",
                      summary_text="", published_at=moment, source="s")
        story.regions = [StoryRegion(region="RU", position=0)]
        session.add(story)
    with session_scope(engine) as session:
        got = session.scalar(sa.select(Story.published_at))
    assert got == moment and got.tzinfo is not None and got.utcoffset() == timedelta(0)
    assert got == datetime(2025, 1, 26, 22, 30, tzinfo=UTC)


def test_the_migrations_build_exactly_the_models(engine):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from worker.store.models import Base

    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_migrations_0010_0011_keep_the_ledger_and_go_back(db_url):
    """Down to 0009 and up again: the new columns and table come and go, and no delivery
    row is lost on the way (on SQLite a table rebuild of `subscribers` would cascade)."""
    from alembic import command

    from worker.store.db import _alembic_config

    engine = create_db_engine(db_url)
    t = datetime(2025, 1, 1)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO subscribers (email, email_key, regions, status, created_at, updated_at, "
                             "timezone, transient_bounces) VALUES ('a@example.org', 'a@example.org', 'RU', "
                             "'active', :t, :t, 'Europe/Moscow', 2)"), {"t": t})
        conn.execute(sa.text("INSERT INTO editions (key, kind, label, window_start, window_end, state, total, "
                             "created_at) VALUES ('k', 'weekly', 'l', :t, :t, 'sending', 1, :t)"), {"t": t})
        conn.execute(sa.text("INSERT INTO deliveries (edition_id, subscriber_id, regions, state, attempts, "
                             "updated_at, due_at) SELECT e.id, s.id, 'RU', 'sent', 1, :t, :t "
                             "FROM editions e, subscribers s"), {"t": t})
        conn.execute(sa.text("INSERT INTO bounce_events (fingerprint, kind, source, delivery_id, received_at) "
                             "SELECT 'f', 'permanent', 'dsn', id, :t FROM deliveries"), {"t": t})
    command.downgrade(_alembic_config(engine), "0009")
    assert current_revision(engine) == "0009"
    with engine.begin() as conn:
        inspector = sa.inspect(conn)
        assert "bounce_events" not in inspector.get_table_names()
        assert "timezone" not in {c["name"] for c in inspector.get_columns("subscribers")}
        assert "due_at" not in {c["name"] for c in inspector.get_columns("deliveries")}
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar() == 1
    assert upgrade_schema(engine) == ("0009", head_revision())
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT timezone, transient_bounces FROM subscribers")).one() == (None, 0)
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries WHERE due_at IS NULL")).scalar() == 1
    engine.dispose()


def test_migration_0017_adds_the_resolution_of_unknown_rows_and_goes_back(db_url):
    from alembic import command

    from worker.store.db import _alembic_config

    engine = create_db_engine(db_url)
    t = datetime(2025, 1, 1)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO subscribers (email, email_key, regions, status, created_at, updated_at) "
                             "VALUES ('a@example.org', 'a@example.org', 'RU', 'active', :t, :t)"), {"t": t})
        conn.execute(sa.text("INSERT INTO editions (key, kind, label, window_start, window_end, state, total, "
                             "created_at) VALUES ('k', 'weekly', 'l', :t, :t, 'done', 1, :t)"), {"t": t})
        conn.execute(sa.text("INSERT INTO deliveries (edition_id, subscriber_id, regions, state, attempts, "
                             "updated_at, resolution, resolved_by, resolved_at) SELECT e.id, s.id, 'RU', 'sent', 1, "
                             ":t, 'sent', 'alice', :t FROM editions e, subscribers s"), {"t": t})
    command.downgrade(_alembic_config(engine), "0016")
    with engine.begin() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("deliveries")}
        assert not columns & {"resolution", "resolved_by", "resolved_at"}
        assert conn.execute(sa.text("SELECT state FROM deliveries")).scalar() == "sent"
    assert upgrade_schema(engine) == ("0016", head_revision())
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT state, resolution, resolved_by FROM deliveries")).one() == (
            "sent", None, None)
    engine.dispose()


def _at(engine, revision: str) -> None:
    from alembic import command

    from worker.store.db import _alembic_config

    command.downgrade(_alembic_config(engine), revision)


_T = datetime(2025, 1, 1)
_ADD_READER = ("INSERT INTO subscribers (email, email_key, regions, status, created_at, updated_at) "
               "VALUES (:e, :e, 'RU', 'active', :t, :t)")


def test_a_reader_written_outside_the_orm_gets_a_link_key_and_none_is_ever_null(engine):
    with engine.begin() as conn:
        conn.execute(sa.text(_ADD_READER), [{"e": "a@example.org", "t": _T}, {"e": "b@example.org", "t": _T}])
        keys = conn.execute(sa.text("SELECT link_key FROM subscribers ORDER BY id")).scalars().all()
    assert len(set(keys)) == 2 and all(len(k) == 32 and set(k) <= set("0123456789abcdef") for k in keys)
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE subscribers SET link_key = NULL"))


def test_migration_0020_gives_keyless_rows_a_key_makes_it_required_and_goes_back(db_url):
    engine = create_db_engine(db_url)
    _at(engine, "0019")
    with engine.begin() as conn:
        conn.execute(sa.text(_ADD_READER), {"e": "a@example.org", "t": _T})  # no link_key: NULL before 0020
        conn.execute(sa.text("INSERT INTO editions (key, kind, label, window_start, window_end, state, total, "
                             "created_at) VALUES ('k', 'weekly', 'l', :t, :t, 'done', 1, :t)"), {"t": _T})
        conn.execute(sa.text("INSERT INTO deliveries (edition_id, subscriber_id, regions, state, attempts, "
                             "updated_at) SELECT e.id, s.id, 'RU', 'sent', 1, :t FROM editions e, subscribers s"),
                     {"t": _T})
        assert conn.execute(sa.text("SELECT link_key FROM subscribers")).scalar() is None
    assert upgrade_schema(engine) == ("0019", head_revision())
    with engine.begin() as conn:
        assert len(conn.execute(sa.text("SELECT link_key FROM subscribers")).scalar()) == 16  # new_link_key's
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar() == 1  # nothing cascaded away
        column = next(c for c in sa.inspect(conn).get_columns("subscribers") if c["name"] == "link_key")
        assert column["nullable"] is False and column["default"]
        assert "ix_bounce_events_kind" in {i["name"] for i in sa.inspect(conn).get_indexes("bounce_events")}
        if engine.dialect.name == "sqlite":
            assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
    _at(engine, "0019")
    with engine.begin() as conn:
        column = next(c for c in sa.inspect(conn).get_columns("subscribers") if c["name"] == "link_key")
        assert column["nullable"] is True and column["default"] is None
        assert "ix_bounce_events_kind" not in {i["name"] for i in sa.inspect(conn).get_indexes("bounce_events")}
    assert upgrade_schema(engine) == ("0019", head_revision())
    engine.dispose()


def test_migration_0015_keys_the_readers_a_chunk_a_statement(db_url):
    engine = create_db_engine(db_url)
    _at(engine, "0014")
    with engine.begin() as conn:
        conn.execute(sa.text(_ADD_READER), [{"e": f"r{n}@example.org", "t": _T} for n in range(2500)])
    updates = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("UPDATE SUBSCRIBERS SET") and "link_key" in statement:
            updates.append(len(parameters) if executemany else 1)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        upgrade_schema(engine, "0015")
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT count(DISTINCT link_key) FROM subscribers")).scalar() == 2500
    assert updates == [1000, 1000, 500]  # a statement a chunk, never one a row
    assert upgrade_schema(engine) == ("0015", head_revision())
    engine.dispose()


def test_the_reports_waiting_for_review_are_counted_from_an_index(engine):
    from worker.store.models import BounceEvent, BounceKind

    count = sa.select(sa.func.count()).select_from(BounceEvent).where(BounceEvent.kind == BounceKind.REVIEW.value)
    with engine.begin() as conn:
        conn.execute(sa.insert(BounceEvent), [
            {"fingerprint": f"f{n}", "kind": "review" if n % 100 == 0 else "permanent", "source": "dsn",
             "received_at": datetime(2025, 1, 1, tzinfo=UTC)} for n in range(3000)])
        conn.execute(sa.text("ANALYZE"))
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text("SET LOCAL enable_seqscan = off"))  # a table this small may be read whole
        sql = str(count.compile(conn, compile_kwargs={"literal_binds": True}))
        plan = " ".join(str(row[-1]) for row in conn.execute(sa.text("EXPLAIN QUERY PLAN " + sql))) \
            if engine.dialect.name == "sqlite" else \
            " ".join(row[0] for row in conn.execute(sa.text("EXPLAIN " + sql)))
        assert conn.execute(count).scalar() == 30
    assert "ix_bounce_events_kind" in plan, plan


def test_migration_0021_gives_each_refusal_at_send_its_history_once_and_nothing_else(db_url):
    engine = create_db_engine(db_url)
    _at(engine, "0020")
    refused, late, recorded = (datetime(2025, 1, 6 + 7 * n, 7) for n in range(3))
    with engine.begin() as conn:
        conn.execute(sa.text(_ADD_READER), {"e": "a@example.org", "t": _T})
        conn.execute(sa.text("UPDATE subscribers SET status = 'bounced'"))
        conn.execute(sa.text("INSERT INTO editions (key, kind, label, window_start, window_end, state, total, "
                             "created_at) VALUES (:k, 'weekly', 'l', :t, :t, 'done', 1, :t)"),
                     [{"k": f"weekly-{n}", "t": _T} for n in range(3)])
        conn.execute(sa.text("INSERT INTO deliveries (edition_id, subscriber_id, regions, state, attempts, last_code, "
                             "last_reply, updated_at) SELECT e.id, s.id, 'RU UA', 'bounced', 1, :code, :reply, :t "
                             "FROM editions e, subscribers s WHERE e.key = :k"), [
            {"k": "weekly-0", "code": 550, "reply": "550 5.1.1 <a@example.org>: no such user", "t": refused},
            {"k": "weekly-1", "code": None, "reply": "late bounce (dsn): 5.1.1 <a@example.org>", "t": late},
            {"k": "weekly-2", "code": 550, "reply": "550 5.1.1 gone", "t": recorded}])
        # A bounce whose event is already there (a late report's, at the row's instant).
        conn.execute(sa.text("INSERT INTO subscriber_events (subscriber_id, at, kind, via, status, regions, note) "
                             "SELECT id, :t, 'bounced', 'bounce', 'bounced', 'RU', 'late bounce 5.1.1' "
                             "FROM subscribers"), {"t": recorded})
    history = sa.text("SELECT at, kind, via, regions, note FROM subscriber_events ORDER BY at, id")
    for _ in range(2):  # and once more after going back: the events stay, none is added twice
        assert upgrade_schema(engine)[1] == head_revision()
        with engine.begin() as conn:
            rows = [tuple(row) for row in conn.execute(history)]
        assert [row[1:] for row in rows] == [
            ("bounced", "refused-at-send", "RU UA", "refused at send 550"),
            ("bounced", "bounce", "RU", "late bounce 5.1.1")]
        assert rows[0][0] in (refused, str(refused))  # SQLite hands raw text back
        _at(engine, "0020")
    upgrade_schema(engine)  # the shared PostgreSQL database is left at head for the next test
    engine.dispose()


def _alembic_current(engine):
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_the_revisions_read_without_alembic_are_alembics(db_url, tmp_path):
    """current_revision and head_revision skip alembic (the worker's main process and every
    command ask them at start); they answer as alembic does."""
    from worker.store.db import _alembic_head

    assert head_revision() == _alembic_head() is not None
    engine = create_db_engine(db_url)
    assert current_revision(engine) == _alembic_current(engine) == head_revision()
    fresh = create_db_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert current_revision(fresh) is _alembic_current(fresh) is None
    upgrade_schema(fresh, "0007")
    assert current_revision(fresh) == _alembic_current(fresh) == "0007"


def test_postgresql_ends_a_session_left_idle_in_its_transaction(pg_url):
    """A worker stopped mid-transaction (SIGSTOP) kept its row locks and the other workers'
    recovery, heartbeats included, waited on them for as long as it was stopped (a CI run:
    176 s); PostgreSQL now ends such a session after IDLE_IN_TRANSACTION_MS."""
    from worker.store.db import IDLE_IN_TRANSACTION_MS

    engine = create_db_engine(pg_url)
    with engine.connect() as conn:
        shown = conn.execute(sa.text("SHOW idle_in_transaction_session_timeout")).scalar()
    assert shown == f"{IDLE_IN_TRANSACTION_MS // 60_000}min"
    engine.dispose()


def test_a_session_stopped_in_its_transaction_lets_go_of_its_locks(pg_url, monkeypatch):
    from sqlalchemy.exc import DBAPIError

    from worker.store import db

    with create_db_engine(pg_url).begin() as conn:
        conn.execute(sa.text(_ADD_READER), {"e": "held@example.org", "t": _T})
    monkeypatch.setattr(db, "IDLE_IN_TRANSACTION_MS", 1000)
    stopped = create_db_engine(pg_url)
    holder = stopped.connect()
    holder.execute(sa.text("UPDATE subscribers SET name = 'stopped' WHERE email_key = 'held@example.org'"))
    # ... and the process holding it stops here. Another worker's write waits for the lock,
    # then gets it when PostgreSQL ends the idle session (bounded here, to fail, not hang).
    other = create_db_engine(pg_url)
    with other.begin() as conn:
        conn.execute(sa.text("SET LOCAL statement_timeout = '30s'"))
        conn.execute(sa.text("UPDATE subscribers SET name = 'other' WHERE email_key = 'held@example.org'"))
    with pytest.raises(DBAPIError):
        holder.execute(sa.text("SELECT 1"))  # the stopped one wakes: its session is gone, nothing it did stays
    holder.close()
    with other.connect() as conn:
        assert conn.execute(sa.text("SELECT name FROM subscribers WHERE email_key = 'held@example.org'")).scalar() \
            == "other"
    stopped.dispose()
    other.dispose()
