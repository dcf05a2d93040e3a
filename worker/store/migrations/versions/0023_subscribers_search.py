"""the console's subscriber search reads one covering index (issue 25)

ix_subscribers_search holds what the list's search and filters read (the address key,
status, regions, name) in the key's order: a page walks it without visiting the table
(PostgreSQL: an index-only scan), so a search that matches few readers costs a read of
the index, not of the whole table in random order.

Revision ID: 0023
Revises: 0022
"""

from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_subscribers_search", "subscribers", ["email_key", "status", "regions", "name"])


def downgrade() -> None:
    op.drop_index("ix_subscribers_search", table_name="subscribers")
