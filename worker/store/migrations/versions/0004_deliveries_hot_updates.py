"""deliveries: index edition_id alone, leave room in pages

A delivery row is updated three times (leased, claimed, recorded). With `state`
in an index every update also writes index entries; without it, and with free
space in each page (fillfactor), PostgreSQL updates the row in place (HOT).

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_edition_state")
        batch_op.create_index("ix_deliveries_edition", ["edition_id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE deliveries SET (fillfactor = 70)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE deliveries RESET (fillfactor)")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_edition")
        batch_op.create_index("ix_deliveries_edition_state", ["edition_id", "state"], unique=False)
