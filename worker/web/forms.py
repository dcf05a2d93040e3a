"""The console's forms: who is signed in, and the rules every form that changes something
is under.

A browser sends its cached basic login (or reaches loopback) for any page that asks, so a
console form is refused unless:

- the browser's Origin (or Referer) is this server's own origin, when it says one (guard.py
  already refused what the browser marks cross-site; with no credentials set, it serves
  operator pages only under a loopback name, so a rebound name is never that origin); and
- the form carries a token signed here (NEWSLETTER_SECRET_KEY) for that action on that
  object, bound to the operator and the credential they signed in with, and valid for
  FORM_MAX_AGE: another site cannot read the page, so it cannot have the token, and a
  token one operator's page held is worthless to another (or after a token is rotated).
"""

from __future__ import annotations

import hashlib

from flask import Response, g, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from worker.web.crosssite import browser_origin
from worker.web.shared import problem, web

SALT = "newsletter.console.v1"
# A page stays usable this long after it was shown.
FORM_MAX_AGE = 3600
MAX_TOKEN = 400


def operator_name() -> str:
    """Who is signed in: an operator's name, "operator token" or "loopback" (guard.py)."""
    return getattr(g, "operator", None) or "operator"


def form_token(action: str, key: str) -> str:
    """The hidden `csrf` value for a form that does `action` to `key`."""
    return _signer().dumps([action, key, operator_name(), _credential()])


def form_refused(action: str, key: str, nothing: str, *, back: str = "/operator") -> Response | None:
    """None when the posted form passes the rules (module docstring); else the refusal.
    `nothing` says what cannot happen without a secret key ("nothing can be purged")."""
    link = (back, "Back")
    origin = browser_origin(request)
    if origin is not None and origin != f"{request.scheme}://{request.host}".lower():
        return problem(403, "Not from here", "This form can only be sent from the operator pages.", link=link)
    if not web().secret:
        return problem(503, "Not set up", f"NEWSLETTER_SECRET_KEY is not set: {nothing} from these pages.",
                       link=link)
    if not _valid(request.form.get("csrf", ""), [action, key, operator_name(), _credential()]):
        return problem(400, "Please try again", "The form did not come from the operator pages, or the page was "
                       "open too long. Nothing was changed: open the page again.", link=link)
    return None


def _signer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(web().secret or "unset", salt=SALT)


def _credential() -> str:
    """What the operator authenticated with, hashed (never the credential itself)."""
    auth = request.headers.get("Authorization", "")
    return hashlib.sha256(auth.encode("utf-8", "replace")).hexdigest()[:16]


def _valid(value: str, expected: list) -> bool:
    if not value or len(value) > MAX_TOKEN:
        return False
    try:
        return _signer().loads(value, max_age=FORM_MAX_AGE) == expected
    except (BadSignature, ValueError, UnicodeError):
        return False
