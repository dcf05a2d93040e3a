"""The console's readers: /operator/subscribers (search, a reader's page, their actions,
import and export; owned by the readers pages' work, issue 25). Every change is made by the
CLI's own functions (worker/readers/, worker/bounces/reactivate.py) and recorded with the
operator's name.

Every POST here is under the console's form rules (forms.py)."""

from __future__ import annotations

from flask import Blueprint, Response, request

from worker.clock import utcnow
from worker.store.models import ChangeVia
from worker.web.forms import form_refused, operator_name
from worker.web.shared import problem, web

bp = Blueprint("console_readers", __name__)


@bp.post("/operator/readers/reactivate")
def reactivate_reader():
    """Undo a bounce (worker/bounces/reactivate.py), under the same rules as the edition forms."""
    from worker.bounces.reactivate import CannotReactivate, reactivate

    stop = form_refused("reactivate", "reader", "nobody can be reactivated")
    if stop is not None:
        return stop
    email = request.form.get("email", "")[:320]
    try:
        before = reactivate(web().engine, email, reason=request.form.get("reason", "")[:1000], who=operator_name(),
                            via=ChangeVia.OPERATOR_PAGE, now=utcnow(), force=request.form.get("force") == "1")
    except CannotReactivate as exc:
        return _problem(409, "Not reactivated", str(exc))
    return _problem(200, "Reactivated", f"{email} was {before} and is active again; the reason is in their history.")


def _problem(status: int, title: str, message: str) -> Response:
    return problem(status, title, message, link=("/operator", "Back to the operator page"))
