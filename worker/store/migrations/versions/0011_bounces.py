"""bounces and complaints heard after the relay accepted a message

- bounce_events: one row per report (DSN, ARF complaint, provider event), unique by a
  fingerprint of the report so processing it twice changes nothing; the delivery,
  edition and subscriber it was matched to, if any.
- subscribers.transient_bounces: temporary failures in a row across editions.

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bounce_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("delivery_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("edition_id", sa.Integer(), nullable=True),
        sa.Column("subscriber_id", sa.Integer(), nullable=True),
        sa.Column("recipient", sa.String(length=320), nullable=True),
        sa.Column("code", sa.String(length=16), nullable=True),
        sa.Column("diagnostic", sa.Text(), nullable=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["delivery_id"], ["deliveries.id"],
                                name=op.f("fk_bounce_events_delivery_id_deliveries"), ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["edition_id"], ["editions.id"],
                                name=op.f("fk_bounce_events_edition_id_editions"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["subscriber_id"], ["subscribers.id"],
                                name=op.f("fk_bounce_events_subscriber_id_subscribers"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bounce_events")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_bounce_events_fingerprint")),
    )
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.create_index("ix_bounce_events_edition_id", ["edition_id", "kind"], unique=False)
        # A report looks for earlier ones about its delivery, and deleting a delivery (a
        # purged subscriber) must find the rows that point at it without a scan.
        batch_op.create_index("ix_bounce_events_delivery_id", ["delivery_id", "kind"], unique=False)
    with op.batch_alter_table("subscribers", schema=None) as batch_op:
        batch_op.add_column(sa.Column("transient_bounces", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # See 0010: no rebuild of `subscribers`.
        op.execute("ALTER TABLE subscribers DROP COLUMN transient_bounces")
    else:
        op.drop_column("subscribers", "transient_bounces")
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.drop_index("ix_bounce_events_delivery_id")
        batch_op.drop_index("ix_bounce_events_edition_id")
    op.drop_table("bounce_events")
