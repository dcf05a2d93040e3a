"""deliveries: how an `unknown` row was decided, by whom and when

`newsletter deliveries resolve EDITION --sent|--resend` decides rows the ledger left
`unknown` (the server may have accepted the message): `sent` (the operator knows it
arrived) or `resend` (it goes out again). The decision stays on the row whatever the
row does next. NULL: never resolved.

Revision ID: 0017
Revises: 0016
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

COLUMNS = ("resolution", "resolved_by", "resolved_at")


def upgrade() -> None:
    # ADD COLUMN, nullable: in place on both databases, no rewrite of the ledger.
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resolution", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("resolved_by", sa.String(120), nullable=True))
        batch_op.add_column(sa.Column("resolved_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    for column in COLUMNS:
        if op.get_bind().dialect.name == "sqlite":
            op.execute(f"ALTER TABLE deliveries DROP COLUMN {column}")
        else:
            op.drop_column("deliveries", column)
