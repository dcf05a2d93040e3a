"""variants: the whole edition for "view online" when the mailed copy was shortened

A variant over Gmail's clip is mailed shortened ("N more stories online"); the
archive page those links lead to shows the whole edition, kept here. NULL: the
mailed HTML is the whole edition.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN: SQLite adds it in place, no rebuild.
    with op.batch_alter_table("variants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("online_html", sa.Text(), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("ALTER TABLE variants DROP COLUMN online_html")
    else:
        op.drop_column("variants", "online_html")
