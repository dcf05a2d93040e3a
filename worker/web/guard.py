"""Who may reach which route: deny by default, run before every request of the app.

A route is the operator's unless its view is marked `public` (shared.py): it then needs
NEWSLETTER_OPERATOR_TOKEN (Bearer, or the password of basic auth), or, while no token is
set, a loopback client asking for a loopback name. Machine routes take the token only as
Bearer, and no route that changes anything takes a request another site's page made,
unless it is marked `takes_other_sites` and checks the origin itself (crosssite.py).
"""

from __future__ import annotations

import hmac
import ipaddress

from flask import Response, current_app, request

from worker.web.crosssite import (
    SAFE_METHODS,
    cross_site_refusal,
    from_elsewhere,
    is_machine_route,
    machine_refusal,
)
from worker.web.shared import problem, web

REALM = 'Basic realm="newsletter operator"'
# A local reverse proxy connects from loopback on behalf of anyone: a request that
# says it was forwarded must not pass as a local one. (A proxy that says nothing
# cannot be told apart: behind one, set the token.)
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP", "Via")


def deny_by_default() -> Response | None:
    """None lets the request through; otherwise the refusal. A new route is the
    operator's until marked public."""
    view = current_app.view_functions.get(request.endpoint)
    if view is None:
        return None
    context = web()
    machine = is_machine_route(request.url_rule.rule)
    if (request.method not in SAFE_METHODS and not getattr(view, "other_sites", False)
            and from_elsewhere(request, frozenset({context.own_origin}))):
        if machine:
            return cross_site_refusal()
        return problem(403, "Not from here", "This form can only be sent from our own page.",
                       link=(request.path, "Open the page again"))
    if machine:
        return None if getattr(view, "public", False) else machine_refusal(request, context.operator_token)
    if getattr(view, "public", False):
        return None
    if context.operator_token:
        if hmac.compare_digest(_presented_token(), context.operator_token):
            return None
        return Response("This page needs the operator token.\n", status=401, mimetype="text/plain",
                        headers={"WWW-Authenticate": REALM})
    if _is_local() and _loopback_name(request.host):
        return None
    return Response("Operator pages are served only to loopback clients, asking for localhost, 127.0.0.1 or "
                    "[::1], while no operator token is set: set NEWSLETTER_OPERATOR_TOKEN to reach them from "
                    "elsewhere.\n", status=403, mimetype="text/plain")


def _presented_token() -> bytes:
    """The token from `Authorization: Bearer T` or the password of basic auth (any user)."""
    auth = request.authorization
    if auth is None:
        return b""
    if auth.type == "basic":
        return (auth.password or "").encode()
    if auth.type == "bearer":
        # From the raw header: werkzeug reads a token with an inner '=' as parameters.
        return request.headers["Authorization"].partition(" ")[2].strip().encode()
    return b""


def _is_local() -> bool:
    """The TCP peer is loopback and no proxy forwarded the request (forwarded
    addresses are never believed, only their presence counts against)."""
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False  # a unix socket, or nothing: not known to be local
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # a dual-stack listener reports 127.0.0.1 as ::ffff:127.0.0.1
    return address.is_loopback


def _loopback_name(host: str) -> bool:
    """The Host the client asked for is a loopback name. A site whose own name is rebound to
    127.0.0.1 (DNS rebinding) reaches us from the browser's loopback, under its name: it
    would be same-origin with the operator pages, able to read them and their forms' tokens."""
    name = host if host.endswith("]") else host.rsplit(":", 1)[0]
    name = name.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback
