"""each reader's language (issue 28)

subscribers.language: the language of our words in their mail and pages, one of the
catalogs shipped (worker/i18n.py); NULL: NEWSLETTER_LANGUAGE. subscribers.confirm_language:
what a sign-up asked for, applied with its confirmation. variants.language: a region set
is rendered once per language its readers read; the variants stored before are English.
stories.language: the language its feed stated, its `lang` in a digest.

Revision ID: 0026
Revises: 0025
"""

import sqlalchemy as sa
from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("subscribers", sa.Column("language", sa.String(length=16), nullable=True))
    op.add_column("subscribers", sa.Column("confirm_language", sa.String(length=16), nullable=True))
    op.add_column("stories", sa.Column("language", sa.String(length=35), nullable=True))
    with op.batch_alter_table("variants") as batch:
        batch.add_column(sa.Column("language", sa.String(length=16), server_default="en", nullable=False))
        batch.drop_constraint("uq_variants_edition_regions", type_="unique")
        batch.create_unique_constraint("uq_variants_edition_regions_language", ["edition_id", "regions", "language"])


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite 3.35+, PostgreSQL): a batch copy of subscribers would rewrite
    # its CREATE statement, which earlier revisions' downgrades read.
    op.execute("ALTER TABLE stories DROP COLUMN language")
    op.execute("ALTER TABLE subscribers DROP COLUMN confirm_language")
    op.execute("ALTER TABLE subscribers DROP COLUMN language")
    op.execute("DELETE FROM variants WHERE language <> 'en'")
    with op.batch_alter_table("variants") as batch:
        batch.drop_constraint("uq_variants_edition_regions_language", type_="unique")
        batch.create_unique_constraint("uq_variants_edition_regions", ["edition_id", "regions"])
        batch.drop_column("language")
