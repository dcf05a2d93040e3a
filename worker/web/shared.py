"""What every blueprint of the web app shares: the app's context, the mark of a readers'
route, and the pages that explain a refusal (problem.html).

Views are module-level functions (one blueprint per side: public.py, signup.py,
manage.py, events.py, console.py); what differs from one app to the next (settings,
engine, the sign-up's mailer and limiter) is built once by create_app (app.py) into a
`WebContext` and read through `web()`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Response, abort, current_app, g, render_template, request
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from worker.bounces.providers import CertificateCache
from worker.clicks import ClickCounter
from worker.digest import RegionSet
from worker.i18n import DEFAULT, LANGUAGES, from_accept_language, translations
from worker.operators.accounts import Verifier
from worker.settings import Settings
from worker.web.mailer import ConfirmationMailer
from worker.web.ratelimit import SubscribeLimiter

EXTENSION = "newsletter"
# A sent digest is shown with no permissions at all: no scripts, no same-origin access,
# no forms, even if something slipped past sanitising.
SANDBOX_CSP = "sandbox; default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'"


@dataclass
class Every:
    """A chore run at most once per `seconds` in this process."""

    seconds: float
    due: float = 0.0

    def claim(self) -> bool:
        now = time.monotonic()
        if now < self.due:
            return False
        self.due = now + self.seconds
        return True


@dataclass(frozen=True)
class WebContext:
    """One app's collaborators, built once by create_app and read by views through web()."""

    settings: Settings
    engine: Engine
    mailer: ConfirmationMailer
    limiter: SubscribeLimiter
    certificates: CertificateCache
    # The regions sign-up and manage offer now (offered.py).
    offered: Callable[[], frozenset[str]]
    # What /metrics shows: the ledger's rows and the confirmations the limits held back.
    metrics: CollectorRegistry
    # Deleting expired sign-ups, done by the sign-up endpoint (signup.py).
    housekeeping: Every
    # NEWSLETTER_SECRET_KEY, or "": the pages that need it say so.
    secret: str
    # NEWSLETTER_OPERATOR_TOKEN, or b"" (guard.py: then loopback only, while no operator exists).
    operator_token: bytes
    # The named operators' tokens (worker/operators/accounts.py).
    operators: Verifier
    # NEWSLETTER_PUBLIC_URL's origin: where our own forms are.
    own_origin: str
    # The story links' redirect (/r/, clicks.py).
    clicks: ClickCounter


def web() -> WebContext:
    return current_app.extensions[EXTENSION]


def public(view):
    """Mark a readers' route; every route without the mark is the operator's (guard.py)."""
    view.public = True
    return view


def speak(language: str | None) -> None:
    """This request's pages in `language` (a reader's, a sign-up's); None: the browser's
    first language we ship, else NEWSLETTER_LANGUAGE."""
    g.language = language if language in LANGUAGES else None


def language() -> str:
    """This request's language: the operator's pages are written in English only."""
    view = current_app.view_functions.get(request.endpoint or "")
    if request.endpoint and not getattr(view, "public", False):
        return DEFAULT
    chosen = g.get("language")
    if chosen is None:
        chosen = g.language = from_accept_language(request.headers.get("Accept-Language")) or web().settings.language
    return chosen


def _(message: str, **values) -> str:
    """A readers' page's words in this request's language (`speak`)."""
    said = translations(language()).gettext(message)
    return said % values if values else said


def ngettext(singular: str, plural: str, count: int, **values) -> str:
    said = translations(language()).ngettext(singular, plural, count)
    return said % {"num": count, **values}


def install_words(app) -> None:
    """Readers' templates say `_()` and `ngettext()` in this request's language (the
    operator's pages are English and use neither)."""
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(
        gettext=lambda message: translations(language()).gettext(message),
        ngettext=lambda singular, plural, n: translations(language()).ngettext(singular, plural, n),
        newstyle=True)


def page(template: str, status: int = 200, **context) -> tuple[str, int]:
    return render_template(template, settings=web().settings, lang=language(), **context), status


def problem(status: int, title: str, message: str, *, link: tuple[str, str] | None = None,
            headers: dict | None = None) -> Response:
    """A page saying what went wrong and, with `link`, where to go from here."""
    body = render_template("problem.html", settings=web().settings, title=title, message=message, link=link,
                           lang=language())
    return Response(body, status=status, mimetype="text/html", headers=headers or {})


def variant_codes(variant: str) -> tuple[str, ...]:
    """The region codes of a variant key ('RU-UA'); 404 when it names none."""
    try:
        codes = RegionSet.from_key(variant).codes
    except ValueError:
        abort(404)
    if not codes:
        abort(404)
    return codes
