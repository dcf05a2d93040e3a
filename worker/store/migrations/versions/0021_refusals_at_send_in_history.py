"""subscriber_events: the refusals at send the ledger made before it wrote history

The ledger marked a reader bounced on a permanent refusal at send without an event
(`subscribers show` made one up from each bounced ledger row). It now writes one through
readers/history.py `change_status` (via `refused-at-send`); the rows bounced before get
theirs here: at the row's last change (the instant the ledger wrote both), with the SMTP
code and without the reply, which may quote the address. Rows a late report bounced have
their event already (worker/bounces sets the row's `updated_at` to its instant) or left
the reader's status as it was; they are not refusals at send.

Downgrade keeps the events: the code before reads them like any other and makes up no
second entry for a row whose instant has a `bounced` event.

Revision ID: 0021
Revises: 0020
"""

from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

# `||` and CAST ... AS VARCHAR are spelled alike by both databases.
BACKFILL = """
INSERT INTO subscriber_events (subscriber_id, at, kind, via, status, regions, note)
SELECT d.subscriber_id, d.updated_at, 'bounced', 'refused-at-send', 'bounced', d.regions,
       CASE WHEN d.last_code IS NULL THEN 'refused at send'
            ELSE 'refused at send ' || CAST(d.last_code AS VARCHAR(8)) END
FROM deliveries AS d
WHERE d.state = 'bounced' AND (d.last_reply IS NULL OR d.last_reply NOT LIKE 'late bounce (%')
  AND NOT EXISTS (SELECT 1 FROM subscriber_events AS e
                  WHERE e.subscriber_id = d.subscriber_id AND e.kind = 'bounced' AND e.at = d.updated_at)
ORDER BY d.id
"""


def upgrade() -> None:
    op.execute(BACKFILL)


def downgrade() -> None:
    pass
