"""The console's editions: /operator/editions (owned by the editions page's work, issue 25)
and the actions on one edition, each the CLI's own function of worker/editions/ (the web
app imports no Celery code: handing out to the broker is behind the door).

Every POST here is under the console's form rules (forms.py)."""

from __future__ import annotations

import logging

from flask import Blueprint, Response, redirect
from sqlalchemy import Engine

from worker import editions
from worker.editions import Released
from worker.settings import Settings
from worker.web.forms import form_refused, operator_name
from worker.web.shared import problem, web

log = logging.getLogger(__name__)
bp = Blueprint("console_editions", __name__)


@bp.post("/operator/editions/<key>/<action>")
def release(key: str, action: str):
    if action not in ("approve", "discard"):
        return _problem(404, "Nothing here", "An edition can be approved or discarded, nothing else.")
    stop = form_refused(action, key, "nothing can be approved or discarded")
    if stop is not None:
        return stop
    context = web()
    done = editions.release(context.engine, context.settings, key, approve=action == "approve",
                            who=operator_name())
    if done.outcome is Released.MISSING:
        return _problem(404, "No such edition", "There is no edition by that key.")
    if done.outcome is Released.NOT_HELD:
        return _problem(409, "Not held", f"{done.key} is {done.state}, not held: nothing was changed.")
    if done.outcome is Released.RACED:
        return _problem(409, "Not held", f"{done.key} was released by someone else just now: nothing was changed.")
    outcome = "discarded"
    if done.outcome is Released.APPROVED:
        outcome = "approved" if _hand_out(context.engine, context.settings, done.edition_id) else "approved-queued"
    return redirect(f"/operator?{outcome}={done.edition_id}", code=303)


def _problem(status: int, title: str, message: str) -> Response:
    return problem(status, title, message, link=("/operator", "Back to the operator page"))


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
