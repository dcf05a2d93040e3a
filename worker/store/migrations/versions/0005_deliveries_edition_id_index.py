"""deliveries: index (edition_id, id) instead of edition_id alone

"Is any row of this edition still open?" is asked after every batch and reads
the edition's rows from the newest down, where the open ones are while it is
sending. With the id in the index that walk stays inside the edition. Neither
column ever changes, so updates still happen in place (HOT, migration 0004).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_edition")
        batch_op.create_index("ix_deliveries_edition_id", ["edition_id", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_edition_id")
        batch_op.create_index("ix_deliveries_edition", ["edition_id"], unique=False)
