"""GET /r/<token>: a story link of a digest. 302 to the story, counted per story, region
and edition, never per reader (worker/clicks.py).

It answers for every link we signed, also once NEWSLETTER_COUNT_CLICKS is off again: the
mail already sent still holds them. Anything else is a 404, never a redirect elsewhere.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, redirect, request

from worker.clicks import Heard
from worker.web.ratelimit import client_address
from worker.web.shared import public, web

bp = Blueprint("clicks", __name__)


@bp.get("/r/<token>")
@public
def click(token: str):
    context = web()
    found = context.clicks.target(token)
    if found is None:
        abort(404)
    _target, url = found
    if context.settings.count_clicks:
        heard = context.clicks.hear(token, method=request.method, headers=request.headers,
                                    client=client_address(request, context.settings.trusted_proxies))
        if heard is Heard.LIMITED:
            return Response("Too many requests.\n", status=429, mimetype="text/plain", headers={"Retry-After": "60"})
    return redirect(url, 302)
