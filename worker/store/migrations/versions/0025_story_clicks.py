"""aggregate click counts (issue 27)

story_clicks: opens of a story's link per (edition, story, section region) through the
/r/ redirect, and the fetches discounted as machines'. Nothing about the reader.

Revision ID: 0025
Revises: 0024
"""

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "story_clicks",
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("story_id", sa.Integer(), nullable=False),
        sa.Column("region", sa.String(length=2), nullable=False),
        sa.Column("clicks", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("discounted", sa.BigInteger(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(["edition_id"], ["editions.id"], name=op.f("fk_story_clicks_edition_id_editions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("edition_id", "story_id", "region", name=op.f("pk_story_clicks")),
    )
    op.create_index("ix_story_clicks_story_id", "story_clicks", ["story_id"])


def downgrade() -> None:
    op.drop_index("ix_story_clicks_story_id", table_name="story_clicks")
    op.drop_table("story_clicks")
