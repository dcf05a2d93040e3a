"""The console's editions: /operator/editions (newest first, a page at a time), one
edition's report (/operator/editions/<key>) and the actions on it, each the CLI's own
function of worker/editions/ (the web app imports no Celery code: handing out to the
broker is behind the door).

Every POST here is under the console's form rules (forms.py) and, done, redirects to the
edition's page with the outcome named in the query string: the page shows only the
sentence it has for a name it knows, never text from the query string.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from flask import Blueprint, Response, redirect, request
from sqlalchemy import Engine

from worker import editions
from worker.clicks import flush_waiting
from worker.console.editions import edition_list, edition_report
from worker.delivery.tallies import LIVE_MAX_AGE, LIVE_SNAPSHOT_FROM
from worker.editions import Decision, Released, Resumed
from worker.settings import Settings
from worker.store.models import EditionState
from worker.web.charts import bar_chart
from worker.web.forms import form_refused, form_token, operator_name
from worker.web.shared import page, problem, web

log = logging.getLogger(__name__)
bp = Blueprint("console_editions", __name__)

# What each outcome of a POST says on the edition's page (the key is the query string's
# `done`; anything else shows nothing).
OUTCOMES = {
    "approved": "approved; its rows were handed to the workers.",
    "approved-queued": "approved; the broker could not be reached, so its rows stay pending and the "
                       "reconciler hands them out once it can.",
    "discarded": "discarded; it will not be sent.",
    "requeued": "its failed rows went back to pending and were handed to the workers.",
    "requeued-queued": "its failed rows went back to pending; the broker could not be reached, so they "
                       "stay pending and the reconciler hands them out once it can.",
    "requeued-paused": "its failed rows went back to pending; it is paused: they go out after Resume.",
    "nothing-failed": "no failed rows to retry: nothing was changed.",
    "paused": "paused; batches in flight finish their current message and stop.",
    "resumed": "resumed; its due rows were handed to the workers.",
    "resumed-queued": "resumed; the broker could not be reached, so its rows stay pending and the "
                      "reconciler hands them out once it can.",
    "marked-sent": "its unknown rows were marked sent.",
    "resent": "its unknown rows went back to pending and were handed to the workers.",
    "resent-queued": "its unknown rows went back to pending; the broker could not be reached, so they "
                     "stay pending and the reconciler hands them out once it can.",
    "resent-paused": "its unknown rows went back to pending; it is paused: they go out after Resume.",
    "nothing-unknown": "no unknown rows left to decide: nothing was changed.",
}
ACTIONS = ("approve", "discard", "retry", "pause", "resume", "mark-sent", "send-again")


@bp.get("/operator/editions")
def editions_page():
    before = request.args.get("before", "")
    listed = edition_list(web().engine, before=int(before) if before.isdigit() and len(before) < 19 else None)
    return page("console_editions.html", listed=listed)


@bp.get("/operator/editions/<key>")
def edition_page(key: str):
    context = web()
    flush_waiting(context.engine, context.secret, context.settings.ratelimit_storage_url)
    report = edition_report(context.engine, key)
    if report is None:
        return _missing()
    chart = None
    if report.chart is not None:
        per = "minute" if report.chart.minutes == 1 else f"{report.chart.minutes} minutes"
        chart = bar_chart(f"Messages sent per {per}", report.chart.bars,
                          label_every=max(1, len(report.chart.bars) // 8))
    done = request.args.get("done", "")
    return page("console_edition.html", report=report, chart=chart, notice=OUTCOMES.get(done), token=form_token,
                can_send=bool(context.secret), States=EditionState, live_snapshot_from=LIVE_SNAPSHOT_FROM,
                live_max_age=int(LIVE_MAX_AGE.total_seconds()), count_clicks=context.settings.count_clicks)


@bp.post("/operator/editions/<key>/<action>")
def act(key: str, action: str):
    if action not in ACTIONS:
        return _problem(404, "Nothing here", "There is no such action on an edition.", key)
    stop = form_refused(action, key, "nothing can be changed", back=_home(key))
    if stop is not None:
        return stop
    context = web()
    if editions.find(context.engine, key) is None:
        return _missing()
    if action in ("approve", "discard"):
        return _release(context.engine, context.settings, key, approve=action == "approve")
    if action == "retry":
        return _retry(context.engine, context.settings, key)
    if action == "pause":
        state = editions.pause(context.engine, key)
        if state is not None:
            return _problem(409, "Not sending", f"{key} is {state}: only a sending edition can be paused. "
                            "Nothing was changed.", key)
        return _done(key, "paused")
    if action == "resume":
        return _resume(context.engine, context.settings, key)
    return _decide(context.engine, context.settings, key, sent=action == "mark-sent")


def _release(engine: Engine, settings: Settings, key: str, *, approve: bool) -> Response:
    done = editions.release(engine, settings, key, approve=approve, who=operator_name())
    if done.outcome is Released.MISSING:
        return _missing()
    if done.outcome is Released.NOT_HELD:
        return _problem(409, "Not held", f"{done.key} is {done.state}, not held: nothing was changed.", key)
    if done.outcome is Released.RACED:
        return _problem(409, "Not held", f"{done.key} was released by someone else just now: nothing was "
                        "changed.", key)
    if done.outcome is Released.DISCARDED:
        return _done(key, "discarded")
    return _done(key, "approved" if _hand_out(engine, settings, done.edition_id) else "approved-queued")


def _retry(engine: Engine, settings: Settings, key: str) -> Response:
    """`newsletter send --edition KEY --retry-failed`."""
    target = editions.resolve_edition(engine, settings, key)
    state = EditionState(editions.require(engine, key).state)
    if state in (EditionState.HELD, EditionState.SKIPPED):
        return _problem(409, "Nothing to retry", f"{key} is {state}: approve a held edition instead. "
                        "Nothing was changed.", key)
    plan = editions.plan_or_reuse(engine, target, force=False, retry=True, who=operator_name())
    if plan.decision is not Decision.REQUEUED or not plan.requeued:
        return _done(key, "nothing-failed")
    if plan.edition_id is None:
        return _done(key, "requeued-paused")
    return _done(key, "requeued" if _hand_out(engine, settings, plan.edition_id) else "requeued-queued")


def _resume(engine: Engine, settings: Settings, key: str) -> Response:
    done = editions.resume(engine, key)
    if done.outcome is Resumed.REFUSED:
        return _problem(409, "Not paused", f"{key} is {done.state}: only a paused edition can be resumed. "
                        "Nothing was changed.", key)
    return _done(key, "resumed" if _hand_out(engine, settings, done.edition_id) else "resumed-queued")


def _decide(engine: Engine, settings: Settings, key: str, *, sent: bool) -> Response:
    """`newsletter deliveries resolve KEY --sent|--resend --all`."""
    decided = editions.decide_unknown(engine, key, sent=sent, keys=None, who=operator_name())
    if not decided.changed:
        return _done(key, "nothing-unknown")
    if sent:
        return _done(key, "marked-sent")
    if decided.state is EditionState.PAUSED:
        return _done(key, "resent-paused")
    return _done(key, "resent" if _hand_out(engine, settings, decided.edition_id) else "resent-queued")


def _home(key: str) -> str:
    return f"/operator/editions/{quote(key, safe='')}"


def _done(key: str, outcome: str) -> Response:
    return redirect(f"{_home(key)}?done={outcome}", code=303)


def _missing() -> Response:
    return problem(404, "No such edition", "There is no edition by that key.",
                   link=("/operator/editions", "All editions"))


def _problem(status: int, title: str, message: str, key: str) -> Response:
    return problem(status, title, message, link=(_home(key), "Back to the edition"))


def _hand_out(engine: Engine, settings: Settings, edition_id: int) -> bool:
    """The edition's due rows to the broker, as the CLI's send does; False when the broker
    cannot be reached (the rows stay pending for the reconciler)."""
    try:
        editions.hand_out(engine, settings, edition_id)
    except editions.BrokerUnreachable as exc:
        log.warning("operator: edition %s has rows to send, but the broker is unreachable (%s): the "
                    "reconciler hands them out", edition_id, type(exc.cause).__name__)
        return False
    return True
