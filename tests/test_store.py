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
