"""The operator's page, /operator: editions in flight and recent ones with their counts,
held editions to approve or discard, and the sources' health.

Operator-only like every route not marked public (guard.py); its POSTs are under the
console's form rules (forms.py: our own origin, a token signed for that action and that
operator).

Approve and discard are the CLI's (`newsletter send --approve/--discard`): the same
functions of worker/editions/, and an approved edition's rows are handed to the broker
through it, as the CLI does (this module imports no Celery code); if the broker is down
they stay pending and the reconciler hands them out. Every title, reason, error and URL on the page is data,
escaped by Jinja's autoescape.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, request
from sqlalchemy import Engine, select

from worker import editions
from worker.clock import utcnow
from worker.ingest.sources import list_sources
from worker.redact import mask_url
from worker.store.db import session_scope
from worker.store.models import Edition, EditionState
from worker.web.forms import form_token
from worker.web.shared import page, web

log = logging.getLogger(__name__)
RECENT = 20
# A URL is shown whole (the operator configured it) but bounded, and never with its credentials.
MAX_URL = 300


@dataclass(frozen=True)
class SourceRow:
    id: int   # the `source` label of the metrics
    url: str
    region: str | None
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    failures: int
    next_poll: datetime | None


bp = Blueprint("operator", __name__)


@bp.get("/operator")
def operator_page():
    context = web()
    shown = editions.overview(context.engine, recent_limit=RECENT)
    done = _notice(context.engine, request.args)
    # A held edition's counts are those of the hold; approving plans its rows again from
    # the stories and subscribers stored now: the page says how many that is.
    held = [(e, editions.approval_sends(context.engine, e.key)) for e in shown if e.state is EditionState.HELD]
    return page("operator.html", editions=shown, notice=done, held=held, sources=_sources(context.engine),
                token=form_token, can_send=bool(context.secret), now=utcnow())


def _notice(engine: Engine, args) -> dict | None:
    """What the last POST did, named by edition id (never text from the query string)."""
    for outcome in ("approved", "approved-queued", "discarded"):
        value = args.get(outcome, "")
        if value.isdigit() and len(value) < 12:
            with session_scope(engine) as session:
                key = session.scalar(select(Edition.key).where(Edition.id == int(value)))
            if key is not None:
                return {"outcome": outcome, "edition": key}
    return None


def _sources(engine: Engine) -> list[SourceRow]:
    return [SourceRow(id=s.id, url=_shown_url(s.url), region=s.region, last_success=s.last_success_at,
                      last_error=s.last_error, last_error_at=s.last_error_at, failures=s.consecutive_failures,
                      next_poll=s.next_poll_at) for s in list_sources(engine)]


def _shown_url(url: str) -> str:
    url = mask_url(url)  # an unparsable one (a file path, or odd) as it is, escaped
    return url if len(url) <= MAX_URL else url[:MAX_URL] + "…"
