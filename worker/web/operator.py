"""The operator's page, /operator: editions in flight and recent ones with their counts,
held editions to approve or discard, and the sources' health.

Operator-only like every route not marked public (guard.py: NEWSLETTER_OPERATOR_TOKEN, or a
loopback client while none is set). Its two POSTs change what is sent, and a browser
sends basic auth (or reaches loopback) for any page that asks it to, so each is also
refused unless:

- the browser's Origin (or Referer) is this server's own origin, when it says one (with no
  operator token set, guard.py serves operator pages only under a loopback name, so a site
  rebinding its own name to 127.0.0.1 is never that origin); and
- the form carries a token this page signed (NEWSLETTER_SECRET_KEY) for that action on
  that edition, bound to the operator's credential and valid for FORM_MAX_AGE: another
  site cannot read the page, so it cannot have the token.

Approve and discard are the CLI's (`newsletter send --approve/--discard`): the same
functions of worker/editions/, and an approved edition's rows are handed to the broker
through it, as the CLI does (this module imports no Celery code); if the broker is down
they stay pending and the reconciler hands them out. Every title, reason, error and URL on the page is data,
escaped by Jinja's autoescape.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import datetime

from flask import Blueprint, Response, redirect, render_template, request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlalchemy import Engine, select

from worker import editions
from worker.clock import utcnow
from worker.editions import Released
from worker.ingest.sources import list_sources
from worker.redact import mask_url
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import ChangeVia, Edition, EditionState
from worker.web.crosssite import browser_origin
from worker.web.shared import problem as problem_page

log = logging.getLogger(__name__)
OPERATOR_SALT = "newsletter.operator.v1"
# The page stays usable this long after it was shown.
FORM_MAX_AGE = 3600
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


def register_operator(app: Blueprint, settings: Settings, engine: Engine) -> None:
    secret = settings.optional_secret_key()
    signer = URLSafeTimedSerializer(secret or "unset", salt=OPERATOR_SALT)

    def token(action: str, key: str) -> str:
        return signer.dumps([action, key, _credential()])

    def problem(status: int, title: str, message: str) -> Response:
        return problem_page(status, title, message, link=("/operator", "Back to the operator page"))

    def refused(action: str, key: str, nothing: str) -> Response | None:
        """The rules every form here is under (module docstring); None when it passes."""
        origin = browser_origin(request)
        if origin is not None and origin != f"{request.scheme}://{request.host}".lower():
            return problem(403, "Not from here", "This form can only be sent from the operator page itself.")
        if not secret:
            return problem(503, "Not set up", f"NEWSLETTER_SECRET_KEY is not set: {nothing} from this page.")
        if not _valid(signer, request.form.get("csrf", ""), [action, key, _credential()]):
            return problem(400, "Please try again", "The form did not come from the operator page, or the page "
                           "was open too long. Nothing was changed: open the page again.")
        return None

    @app.get("/operator")
    def operator_page():
        shown = editions.overview(engine, recent_limit=RECENT)
        done = _notice(engine, request.args)
        # A held edition's counts are those of the hold; approving plans its rows again from
        # the stories and subscribers stored now: the page says how many that is.
        held = [(e, editions.approval_sends(engine, e.key)) for e in shown if e.state is EditionState.HELD]
        return render_template("operator.html", settings=settings, editions=shown, notice=done, held=held,
                               sources=_sources(engine), token=token, can_send=bool(secret), now=utcnow())

    @app.post("/operator/editions/<key>/<action>")
    def release(key: str, action: str):
        if action not in ("approve", "discard"):
            return problem(404, "Nothing here", "An edition can be approved or discarded, nothing else.")
        stop = refused(action, key, "nothing can be approved or discarded")
        if stop is not None:
            return stop
        done = editions.release(engine, settings, key, approve=action == "approve", who=_who())
        if done.outcome is Released.MISSING:
            return problem(404, "No such edition", "There is no edition by that key.")
        if done.outcome is Released.NOT_HELD:
            return problem(409, "Not held", f"{done.key} is {done.state}, not held: nothing was changed.")
        if done.outcome is Released.RACED:
            return problem(409, "Not held", f"{done.key} was released by someone else just now: nothing was "
                           "changed.")
        outcome = "discarded"
        if done.outcome is Released.APPROVED:
            outcome = "approved" if _hand_out(engine, settings, done.edition_id) else "approved-queued"
        return redirect(f"/operator?{outcome}={done.edition_id}", code=303)

    @app.post("/operator/readers/reactivate")
    def reactivate_reader():
        """Undo a bounce (worker/bounces/reactivate.py), under the same rules as the edition forms."""
        from worker.bounces.reactivate import CannotReactivate, reactivate

        stop = refused("reactivate", "reader", "nobody can be reactivated")
        if stop is not None:
            return stop
        email = request.form.get("email", "")[:320]
        try:
            before = reactivate(engine, email, reason=request.form.get("reason", "")[:1000], who=_who(),
                                via=ChangeVia.OPERATOR_PAGE, now=utcnow(),
                                force=request.form.get("force") == "1")
        except CannotReactivate as exc:
            return problem(409, "Not reactivated", str(exc))
        body = render_template("problem.html", settings=settings, title="Reactivated",
                               message=f"{email} was {before} and is active again; the reason is in their history.",
                               link=("/operator", "Back to the operator page"))
        return Response(body, status=200, mimetype="text/html")


def _hand_out(engine: Engine, settings: Settings, edition_id: int) -> bool:
    """The approved edition's rows to the broker, as the CLI's send does; False when the
    broker cannot be reached (the rows stay pending for the reconciler)."""
    try:
        editions.hand_out(engine, settings, edition_id)
    except editions.BrokerUnreachable as exc:
        log.warning("operator: approved edition %s, but the broker is unreachable (%s): the reconciler "
                    "hands its rows out", edition_id, type(exc.cause).__name__)
        return False
    return True


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


def _credential() -> str:
    """What the operator authenticated with, hashed: a token signed for one credential is
    worthless with another (a rotated operator token ends every open form)."""
    auth = request.headers.get("Authorization", "")
    return hashlib.sha256(auth.encode("utf-8", "replace")).hexdigest()[:16]


def _who() -> str:
    auth = request.authorization
    name = (auth.username or "") if auth is not None and auth.type == "basic" else ""
    # Any user name passes basic auth: it is kept as a label in the note, bounded, not trusted.
    label = "".join(ch for ch in name if ch.isprintable())[:40]
    return f"operator page ({label})" if label else "operator page"


def _valid(signer: URLSafeTimedSerializer, value: str, expected: list) -> bool:
    if not value or len(value) > 400:
        return False
    try:
        return signer.loads(value, max_age=FORM_MAX_AGE) == expected
    except (BadSignature, ValueError, UnicodeError):
        return False
