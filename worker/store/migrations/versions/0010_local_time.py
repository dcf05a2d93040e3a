"""local send time: a subscriber's time zone, and when each delivery row falls due

- subscribers.timezone: an IANA zone name, or NULL for the region's main zone and then
  NEWSLETTER_TIMEZONE.
- subscribers.confirm_timezone: the zone a web sign-up asked for, applied when it is
  confirmed (like confirm_name); NULL: the sign-up gave none.
- deliveries.due_at: when the row may be handed out (the send time in the reader's
  zone); NULL means at once.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


COLUMNS = (("subscribers", "timezone"), ("subscribers", "confirm_timezone"), ("deliveries", "due_at"))


def upgrade() -> None:
    # ADD COLUMN: SQLite adds these in place, no rebuild.
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("timezone", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("confirm_timezone", sa.String(length=64), nullable=True))
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("due_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    for table, column in COLUMNS:
        if op.get_bind().dialect.name == "sqlite":
            # Not batch mode: rebuilding `subscribers` would cascade its DROP to every
            # delivery row. SQLite >= 3.35 drops a column in place.
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        else:
            op.drop_column(table, column)
