"""Requests a browser sends on another site's behalf, and the routes only machines call.

A page on any site can make a visitor's browser POST a form or a text/plain body to us
without asking first (a CORS "simple request", no preflight), carrying what the browser
holds for us: a cached basic login, and a loopback address when the operator's browser
runs on this host. So every request that may change something is refused when the
browser says it comes from elsewhere: `Sec-Fetch-Site: cross-site` or `same-site`, or an
`Origin` (else the Referer's origin) that is not ours. A request that says neither is
not a browser's (curl, a relay, SNS, a mail provider's RFC 8058 one-click) and is judged
by the route. Only the sign-up takes posts from the news site, and checks their origin
itself (signup.py).

Machine routes (`/events/*`, `/metrics`) are called by programs: they take the operator
token only as `Authorization: Bearer` (a browser never adds that to a cross-site request
without a preflight we do not answer), never basic auth (which a browser caches and
resends) and never a loopback address as proof.
"""

from __future__ import annotations

from collections.abc import Collection

from flask import Request, Response

from worker.origins import origin_of

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MACHINE_PREFIXES = ("/events/", "/metrics")
MACHINE_REALM = 'Bearer realm="newsletter machine routes"'


def takes_other_sites(view):
    """Mark a route that accepts posts from other sites' pages and checks their origin itself."""
    view.other_sites = True
    return view


def browser_origin(request: Request) -> str | None:
    """Where the browser says the request comes from: Origin, else the Referer's origin;
    None when it says neither. 'null' (a sandboxed or privacy-stripped origin) is nobody's,
    except with `Sec-Fetch-Site: same-origin`: a page whose referrer policy is no-referrer
    makes Chromium send `Origin: null` with that page's own forms, and Sec-Fetch-Site is a
    header no page can set, so it vouches that the form was ours."""
    origin = request.headers.get("Origin")
    if origin is not None:
        origin = origin.strip().lower()
        if origin == "null" and request.headers.get("Sec-Fetch-Site", "").strip().lower() == "same-origin":
            return served_origin(request)
        return origin
    referrer = request.headers.get("Referer")
    return origin_of(referrer) if referrer else None


def served_origin(request: Request) -> str:
    """The origin the browser asked for: this server's, as the client reached it."""
    return f"{request.scheme}://{request.host}".lower()


def origin_refused(request: Request, allowed: Collection[str]) -> bool:
    """The browser says the request comes from an origin not in `allowed`. One that says
    none is not a browser's request (curl, a relay): the route judges it."""
    origin = browser_origin(request)
    return origin is not None and origin not in allowed


def from_elsewhere(request: Request, own: frozenset[str]) -> bool:
    """The browser marks the request as made by another site's page."""
    if request.headers.get("Sec-Fetch-Site", "").strip().lower() in ("cross-site", "same-site"):
        return True
    return origin_refused(request, own | {served_origin(request)})


def is_machine_route(rule: str) -> bool:
    return rule.startswith(MACHINE_PREFIXES)


def machine_refusal(*, configured: bool) -> Response:
    """The answer to a machine route's request without a known Bearer credential
    (NEWSLETTER_OPERATOR_TOKEN or an operator's token); `configured`: one of them exists."""
    if not configured:
        return Response("Machine routes (/events/*, /metrics) need NEWSLETTER_OPERATOR_TOKEN or an operator's "
                        "token, sent as `Authorization: Bearer TOKEN`; a loopback address is not enough.\n",
                        status=403, mimetype="text/plain")
    return Response("This route needs the operator token as `Authorization: Bearer TOKEN` (never basic).\n",
                    status=401, mimetype="text/plain", headers={"WWW-Authenticate": MACHINE_REALM})


def cross_site_refusal() -> Response:
    return Response("Refused: the browser says this request was made by another site's page.\n",
                    status=403, mimetype="text/plain")
