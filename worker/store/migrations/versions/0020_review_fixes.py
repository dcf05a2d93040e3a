"""review fixes: subscribers.link_key NOT NULL with a database default; bounce_events(kind) indexed

- link_key: migration 0015 gave every row one, but the column stayed nullable with only a
  Python default, so a row written outside the ORM had none and every link of its was
  dead. Rows without one get one here; then the column is NOT NULL and the database makes
  a random value for a row written without it. On SQLite by rewriting the stored
  definition, as 0015 does (a batch rebuild's DROP TABLE, with foreign keys on, first
  deletes every row and, by ON DELETE CASCADE, their deliveries and history); SQLite
  checks NOT NULL on writes only, and no row is NULL any more.
- bounce_events(kind): the reports waiting for review are counted at each /metrics
  scrape and each `status`, without reading the whole table.

Revision ID: 0020
Revises: 0019
"""

import re

import sqlalchemy as sa
from alembic import op

from worker.tokens import new_link_key

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

CHUNK = 1000
subscribers = sa.table("subscribers", sa.column("id", sa.Integer), sa.column("link_key", sa.String))
SQLITE_DEFAULT = "(lower(hex(randomblob(16))))"
POSTGRESQL_DEFAULT = "replace(gen_random_uuid()::text, '-', '')"


def upgrade() -> None:
    bind = op.get_bind()
    fill_link_keys(bind)
    op.create_index("ix_bounce_events_kind", "bounce_events", ["kind"])
    if bind.dialect.name == "sqlite":
        _rewrite(bind, "link_key VARCHAR(32)", f"link_key VARCHAR(32) DEFAULT {SQLITE_DEFAULT} NOT NULL")
    else:
        op.alter_column("subscribers", "link_key", existing_type=sa.String(32), nullable=False,
                        server_default=sa.text(POSTGRESQL_DEFAULT))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _rewrite(bind, f"link_key VARCHAR(32) DEFAULT {SQLITE_DEFAULT} NOT NULL", "link_key VARCHAR(32)")
    else:
        op.alter_column("subscribers", "link_key", existing_type=sa.String(32), nullable=True, server_default=None)
    op.drop_index("ix_bounce_events_kind", table_name="bounce_events")


def fill_link_keys(bind) -> None:
    """A key for each row without one, CHUNK rows a statement."""
    ids = list(bind.execute(sa.select(subscribers.c.id).where(subscribers.c.link_key.is_(None))).scalars())
    update = subscribers.update().where(subscribers.c.id == sa.bindparam("row_id")) \
        .values(link_key=sa.bindparam("key"))
    for start in range(0, len(ids), CHUNK):
        bind.execute(update, [{"row_id": i, "key": new_link_key()} for i in ids[start:start + CHUNK]])


def _rewrite(bind, old: str, new: str) -> None:
    """subscribers' stored definition with `old` replaced by `new` (see the docstring)."""
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subscribers'"
                               ).scalar_one()
    changed, count = re.subn(rf"\b{re.escape(old)}(?=\s*[,)])", new, sql)
    if count != 1:
        raise RuntimeError(f"subscribers: unexpected definition {sql!r}")
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'subscribers'",
                             (changed,))
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
