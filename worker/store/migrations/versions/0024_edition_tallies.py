"""an edition's tallies, stored once it is finished (issue 25)

edition_tallies: what the console's report and dashboard count from a finished edition's
deliveries (worker/delivery/tallies.py), as JSON (a small summary the dashboard reads for
many editions, and the whole body an edition's report reads), with the edition's finished_at
they were made for. An edition has as many rows as the list has readers; its rows change after it
finishes only by a late bounce, an operator's decision or a purge, and each of those
deletes the stored tallies in its own transaction. A large live edition's count is stored
too, without a finished_at, and shown for at most 30 seconds.

Revision ID: 0024
Revises: 0023
"""

import sqlalchemy as sa
from alembic import op

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "edition_tallies",
        sa.Column("edition_id", sa.Integer(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("made_at", sa.DateTime(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["edition_id"], ["editions.id"], name=op.f("fk_edition_tallies_edition_id_editions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("edition_id", name=op.f("pk_edition_tallies")),
    )


def downgrade() -> None:
    op.drop_table("edition_tallies")
