"""named operators and the audit trail (issue 25)

- operators: a name and a slow hash (scrypt) of the token printed once at `operators add`.
- audit_events: every change an operator made through the console or the command line.
- subscriber_events.by: who made a change for the reader (NULL: the reader, a mail server
  or the worker).
- ix_subscriber_events_at: the console's sign-ups, confirmations, unsubscribes, bounces and
  complaints per week read a range of instants.

Revision ID: 0022
Revises: 0021
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "operators",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("token_hash", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operators")),
        sa.UniqueConstraint("name", name=op.f("uq_operators_name")),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("who", sa.String(length=64), nullable=False),
        sa.Column("via", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=48), nullable=False),
        sa.Column("target", sa.String(length=400), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_events")),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    # ADD COLUMN: SQLite adds it in place, no rebuild.
    with op.batch_alter_table("subscriber_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("by", sa.String(length=64), nullable=True))
    op.create_index("ix_subscriber_events_at", "subscriber_events", ["at", "kind"])


def downgrade() -> None:
    op.drop_index("ix_subscriber_events_at", table_name="subscriber_events")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE subscriber_events DROP COLUMN by")
    else:
        op.drop_column("subscriber_events", "by")
    op.drop_index("ix_audit_events_at", table_name="audit_events")
    op.drop_table("audit_events")
    op.drop_table("operators")
