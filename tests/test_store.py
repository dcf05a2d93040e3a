from datetime import UTC, datetime, timedelta, timezone

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
