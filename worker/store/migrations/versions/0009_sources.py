"""sources: polled feeds with their validators and health; editions may be 'held'

- sources: one row per feed URL or file, with its default region, ETag and
  Last-Modified for conditional GET, last success / error, items added, failures in a
  row and the next poll time (backoff while failing).
- editions.state may be 'held' (planned, not handed out until approved).

SQLite cannot alter a CHECK constraint; as in 0008, the CHECK is rewritten in the
stored table definition (batch mode would rebuild `editions`, and with foreign keys on
its DROP would cascade to every delivery row).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

OLD_CHECK = "state IN ('sending', 'paused', 'done', 'skipped')"
NEW_CHECK = "state IN ('sending', 'paused', 'done', 'skipped', 'held')"


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("region", sa.String(length=2), nullable=True),
        sa.Column("origin", sa.String(length=16), nullable=False),
        sa.Column("etag", sa.String(length=1024), nullable=True),
        sa.Column("last_modified", sa.String(length=200), nullable=True),
        sa.Column("last_polled_at", sa.DateTime(), nullable=True),
        sa.Column("last_success_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("last_error_at", sa.DateTime(), nullable=True),
        sa.Column("items_added", sa.Integer(), nullable=False),
        sa.Column("last_rejected", sa.Integer(), nullable=False),
        sa.Column("consecutive_failures", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sources")),
        sa.UniqueConstraint("url", name=op.f("uq_sources_url")),
    )
    _replace_state_check(OLD_CHECK, NEW_CHECK)


def downgrade() -> None:
    # A held edition does not exist before this revision: it was never sent.
    op.execute("UPDATE editions SET state = 'skipped' WHERE state = 'held'")
    _replace_state_check(NEW_CHECK, OLD_CHECK)
    op.drop_table("sources")


def _replace_state_check(old: str, new: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_editions_state"), "editions", type_="check")
        op.create_check_constraint(op.f("ck_editions_state"), "editions", new)
        return
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'editions'").scalar_one()
    if old not in sql:
        raise RuntimeError(f"editions: expected the CHECK {old!r} in {sql!r}")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'editions'",
                             (sql.replace(old, new),))
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
