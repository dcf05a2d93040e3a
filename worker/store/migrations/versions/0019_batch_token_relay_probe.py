"""faults with a backlog (issue 23): leases follow the batch; a paused edition probes the relay

- deliveries.batch_token: the task a batch lease was taken for (Celery's task id), so a
  retried or redelivered task takes its own batch's rows back from whichever process
  held them; NULL outside a batch lease.
- editions.resume_at: when a paused edition next asks the relay whether it answers
  again (paused by a run of temporary failures); NULL: paused until a person resumes it.
- editions.probes: how many probes failed since the pause (the next one waits longer).

Revision ID: 0019
Revises: 0018
"""

import sqlalchemy as sa
from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

COLUMNS = (("deliveries", "batch_token"), ("editions", "resume_at"), ("editions", "probes"))


def upgrade() -> None:
    # ADD COLUMN: SQLite adds these in place, no rebuild.
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("batch_token", sa.String(length=64), nullable=True))
    with op.batch_alter_table("editions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("resume_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("probes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table, column in COLUMNS:
        if op.get_bind().dialect.name == "sqlite":
            # Not batch mode: rebuilding `editions` would cascade its DROP to every delivery row.
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
        else:
            op.drop_column(table, column)
