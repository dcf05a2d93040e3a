"""Who may reach which route: deny by default, run before every request of the app.

A route is the operator's unless its view is marked `public` (shared.py): it then needs
credentials, Bearer or the password of basic auth: a named operator's token
(`newsletter operators add`, worker/operators/accounts.py) or NEWSLETTER_OPERATOR_TOKEN.
While neither exists, a loopback client asking for a loopback name is let in (a fresh
install on a laptop); once either exists, nobody is, from loopback either. Machine routes
take credentials only as Bearer, and no route that changes anything takes a request
another site's page made, unless it is marked `takes_other_sites` and checks the origin
itself (crosssite.py).

Who got in is `g.operator` and the acting operator (worker/operators/actor.py) for the
request: what the request changes names them in the reader's history and the audit trail.
"""

from __future__ import annotations

import hmac
import ipaddress

from flask import Response, current_app, g, request

from worker.operators.actor import Actor, reset_actor, set_actor
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
        if getattr(view, "public", False):
            return None
        name = _identify(context, _bearer(), None)
        if name is None:
            return machine_refusal(configured=bool(context.operator_token) or context.operators.exists())
        _act_as(name)
        return None
    if getattr(view, "public", False):
        return None
    auth = request.authorization
    name = _identify(context, _presented_token().decode("utf-8", "replace"),
                     auth.username if auth is not None and auth.type == "basic" else None)
    if name is not None:
        _act_as(name)
        return None
    if context.operator_token or context.operators.exists():
        return Response("This page needs an operator's token (`newsletter operators add NAME`) or "
                        "NEWSLETTER_OPERATOR_TOKEN, as the password (any user name) or a Bearer token.\n",
                        status=401, mimetype="text/plain", headers={"WWW-Authenticate": REALM})
    if _is_local() and _loopback_name(request.host):
        _act_as("loopback")
        return None
    return Response("Operator pages are served only to loopback clients, asking for localhost, 127.0.0.1 or "
                    "[::1], while no operator token is set: set NEWSLETTER_OPERATOR_TOKEN to reach them from "
                    "elsewhere.\n", status=403, mimetype="text/plain")


def forget_actor(_error=None) -> None:
    """After the request: the acting operator is this request's only."""
    token = g.pop("actor_token", None)
    if token is not None:
        try:
            reset_actor(token)
        except ValueError:  # set in another context (a streamed response): it ends with it
            pass


def _act_as(name: str) -> None:
    g.operator = name
    g.actor_token = set_actor(Actor(who=name, via="console"))


def _identify(context, presented: str, user: str | None) -> str | None:
    """Whose credential this is: "operator token", an operator's name, or None."""
    if not presented:
        return None
    if context.operator_token and hmac.compare_digest(presented.encode("utf-8", "replace"), context.operator_token):
        return "operator token"
    return context.operators.verify(presented, user)


def _bearer() -> str:
    scheme, _, presented = request.headers.get("Authorization", "").strip().partition(" ")
    return presented.strip() if scheme.lower() == "bearer" else ""


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
