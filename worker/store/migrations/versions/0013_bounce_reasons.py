"""bounce reasons (issue 20): why each report failed, stored with it

- bounce_events.reason: "userunknown", "mailboxfull", "blocked", ... (worker/bounces/reasons.py);
  null for the reports stored before, which `status` counts under their kind only.

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.String(length=24), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("bounce_events", schema=None) as batch_op:
        batch_op.drop_column("reason")
