"""The links every email carries, and /healthz: public, cheap, and nothing renders here.

- GET /unsubscribe/<token> asks; POST (RFC 8058's one-click, or the page's button) does it.
- GET /healthz answers whether the database does.

"View online" (/archive/<edition>/<variant>) is archive.py's, with the archive's list and feeds.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, request
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from worker.readers.subscribers import set_status_by_id
from worker.store.db import session_scope
from worker.store.models import ChangeVia, Subscriber, SubscriberStatus
from worker.tokens import link_opens, read_unsubscribe_token
from worker.web.crosssite import takes_other_sites
from worker.web.shared import _, page, problem, public, speak, web

bp = Blueprint("public", __name__)


@bp.get("/healthz")
@public
def healthz():
    try:
        with web().engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return Response("database unavailable\n", status=503, mimetype="text/plain")
    return Response("ok\n", mimetype="text/plain")


@bp.get("/unsubscribe/<token>")
@public
def unsubscribe_confirm(token: str):
    subscriber = _subscriber_for(token)
    # GET never changes anything: link scanners and prefetchers follow links.
    return page("unsubscribe.html", subscriber=subscriber, token=token, done=False)


@bp.post("/unsubscribe/<token>")
@public
# RFC 8058's POST comes from the mail provider, and from some clients' own pages (a
# webmail, an add-on): the link in the path is the only credential, so another site's
# page can do nothing with it that its server could not.
@takes_other_sites
def unsubscribe(token: str):
    subscriber = _subscriber_for(token)
    # RFC 8058: the body is "List-Unsubscribe=One-Click"; the confirm page's form
    # posts the same field (and says it is the page). Either way the answer is 200,
    # never a redirect.
    via = ChangeVia.UNSUBSCRIBE_PAGE if request.form.get("source") == "page" else ChangeVia.ONE_CLICK
    set_status_by_id(web().engine, subscriber.id, SubscriberStatus.UNSUBSCRIBED, via=via)
    return page("unsubscribe.html", subscriber=subscriber, token=token, done=True)


def _subscriber_for(token: str) -> Subscriber:
    secret = web().secret
    link = read_unsubscribe_token(secret, token) if secret else None
    if link is None:
        abort(400, "This unsubscribe link is not valid.")
    with session_scope(web().engine) as session:
        subscriber = session.get(Subscriber, link.subscriber_id)
    # Purged since, or a row the link was not made for: nothing of theirs left to change.
    if subscriber is None or not link_opens(link, key=subscriber.link_key, legacy=subscriber.legacy_links):
        abort(problem(410, _("This link is no longer valid"), _("We hold nothing for this link any more.")))
    speak(subscriber.language)
    return subscriber
