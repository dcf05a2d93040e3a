"""readers: pending subscribers, one live confirmation link each, and every change kept

- subscribers.status may be 'pending' (signed up on the web, not confirmed).
- subscribers.confirm_nonce / confirm_sent_at / confirm_regions / confirm_name: the one
  live confirmation link, when it was mailed, and what confirming it applies.
- subscriber_events: every change, with when and how, and the status and regions after it.

SQLite cannot alter a CHECK constraint, and Alembic's batch mode would rebuild the
table: copy it, DROP the old one, rename. With foreign keys on (as every connection of
ours has them, worker/store/db.py), SQLite's DROP TABLE first deletes the rows, and
ON DELETE CASCADE would take every delivery row with them; PRAGMA foreign_keys cannot be
switched off inside the migration's transaction. So on SQLite the CHECK is rewritten in
the stored table definition instead, the procedure SQLite documents for changing
constraints that do not affect what is stored on disk
(https://www.sqlite.org/lang_altertable.html#otheralter): the schema version is bumped
so every connection reloads the schema, and the rows are not touched.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD_CHECK = "status IN ('active', 'unsubscribed', 'bounced', 'complained')"
NEW_CHECK = "status IN ('pending', 'active', 'unsubscribed', 'bounced', 'complained')"
COLUMNS = ("confirm_nonce", "confirm_sent_at", "confirm_regions", "confirm_name")


def upgrade() -> None:
    _replace_status_check(OLD_CHECK, NEW_CHECK)
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        # ADD COLUMN: SQLite adds these in place, no rebuild.
        batch_op.add_column(sa.Column("confirm_nonce", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("confirm_sent_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("confirm_regions", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("confirm_name", sa.String(length=200), nullable=True))

    op.create_table(
        "subscriber_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("subscriber_id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("kind", sa.String(length=24), nullable=False),
        sa.Column("via", sa.String(length=24), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("regions", sa.String(length=200), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"],
                                name=op.f("fk_subscriber_events_subscriber_id_subscribers"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriber_events")),
    )
    with op.batch_alter_table("subscriber_events", schema=None) as batch_op:
        batch_op.create_index("ix_subscriber_events_subscriber_id", ["subscriber_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("subscriber_events", schema=None) as batch_op:
        batch_op.drop_index("ix_subscriber_events_subscriber_id")
    op.drop_table("subscriber_events")
    # Sign-ups nobody confirmed do not exist before this revision.
    op.execute("DELETE FROM subscribers WHERE status = 'pending'")
    if op.get_bind().dialect.name == "sqlite":
        # Not batch mode: that rebuilds the table (see above). SQLite >= 3.35 drops in place.
        for column in COLUMNS:
            op.execute(f"ALTER TABLE subscribers DROP COLUMN {column}")
    else:
        with op.batch_alter_table("subscribers", schema=None) as batch_op:
            for column in COLUMNS:
                batch_op.drop_column(column)
    _replace_status_check(NEW_CHECK, OLD_CHECK)


def _replace_status_check(old: str, new: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.drop_constraint(op.f("ck_subscribers_status"), "subscribers", type_="check")
        op.create_check_constraint(op.f("ck_subscribers_status"), "subscribers", new)
        return
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'subscribers'").scalar_one()
    if old not in sql:
        raise RuntimeError(f"subscribers: expected the CHECK {old!r} in {sql!r}")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'subscribers'",
                             (sql.replace(old, new),))
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
