"""variants: the nonce of the personal-value markers

Markers were fixed strings, and a story could spell one out and have each
reader's address or unsubscribe link filled in. Each render now draws a nonce;
a variant keeps it so that every worker process fills the same markers.
Rows stored before have NULL and the fixed markers.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("marker", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.drop_column("marker")
