"""The Flask app: a public side for readers and an operator side behind a token.

One blueprint per part, views at module level:

- public.py: the links every email carries (unsubscribe) and /healthz;
- archive.py: view online, the list of sent digests and each region's Atom feed;
- clicks.py: the story links' counting redirect, /r/<token>;
- signup.py, manage.py: the readers' pages (rules in readers.py);
- events.py: bounces and complaints posted by relays (machine routes);
- console.py: the operator's week overview, previews and /metrics; operator.py: /operator
  and its forms.

Readers' routes are reachable from every email, so they stay cheap: nothing renders a
digest on request. Every other route is the operator's (guard.py: deny by default) and
needs NEWSLETTER_OPERATOR_TOKEN, or a loopback client while no token is set; machine
routes (/events/*, /metrics) take the token only as Bearer, and no route that changes
anything takes a request another site's page made (crosssite.py).
"""

from __future__ import annotations

from flask import Flask, Response
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine

from worker.bounces.providers import CertificateCache, CertificateFetcher, fetch_sns_certificate
from worker.clicks import ClickCounter
from worker.errors import ConfigError
from worker.metrics import LedgerCollector
from worker.operators.accounts import Verifier
from worker.origins import origin_of
from worker.settings import Settings, load_settings
from worker.store.db import create_db_engine, current_revision, head_revision
from worker.web import (
    archive,
    clicks,
    console,
    console_audit,
    console_editions,
    console_readers,
    events,
    manage,
    operator,
    public,
    signup,
)
from worker.web.guard import deny_by_default, forget_actor
from worker.web.mailer import ConfirmationMailer
from worker.web.offered import offered_regions
from worker.web.ratelimit import RefusedConfirmations, SubscribeLimiter
from worker.web.shared import EXTENSION, Every, WebContext, install_words, page

# Readers post small forms: anything bigger is refused before it is read.
MAX_BODY = 64 * 1024
MAX_FORM_PARTS = 100
BLUEPRINTS = (public.bp, archive.bp, clicks.bp, signup.bp, manage.bp, events.bp, console.bp, operator.bp,
              console_audit.bp, console_editions.bp, console_readers.bp)


def create_app(settings: Settings, engine: Engine, *, mailer: ConfirmationMailer | None = None,
               limiter: SubscribeLimiter | None = None,
               sns_certificates: CertificateFetcher = fetch_sns_certificate) -> Flask:
    app = Flask(__name__)
    app.config.update(NEWSLETTER_SETTINGS=settings, MAX_CONTENT_LENGTH=MAX_BODY, MAX_FORM_MEMORY_SIZE=MAX_BODY,
                      MAX_FORM_PARTS=MAX_FORM_PARTS)
    context = _context(settings, engine, mailer=mailer or ConfirmationMailer(engine, settings),
                       limiter=limiter or SubscribeLimiter(settings), sns_certificates=sns_certificates)
    app.extensions[EXTENSION] = context
    app.extensions["newsletter_mailer"] = context.mailer
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    install_words(app)
    # Deny by default: a new route is the operator's until marked public.
    app.before_request(deny_by_default)
    app.teardown_request(forget_actor)
    app.after_request(_headers)
    app.register_error_handler(404, _not_found)
    app.register_error_handler(413, _too_large)
    return app


def _context(settings: Settings, engine: Engine, *, mailer: ConfirmationMailer, limiter: SubscribeLimiter,
             sns_certificates: CertificateFetcher) -> WebContext:
    metrics = CollectorRegistry(auto_describe=False)
    metrics.register(LedgerCollector(engine))
    # Confirmation mails the mailbox and domain limits held back (ratelimit.py), from Redis.
    metrics.register(RefusedConfirmations(limiter))
    operator_token = settings.operator_token.get_secret_value().encode() if settings.operator_token else b""
    return WebContext(settings=settings, engine=engine, mailer=mailer, limiter=limiter,
                      certificates=CertificateCache(sns_certificates), offered=offered_regions(engine, settings),
                      metrics=metrics, housekeeping=Every(signup.HOUSEKEEPING_SECONDS),
                      secret=settings.optional_secret_key(), operator_token=operator_token,
                      operators=Verifier(engine),
                      own_origin=origin_of(settings.public_url),
                      clicks=ClickCounter(engine, redis_url=settings.ratelimit_storage_url,
                                          secret=settings.optional_secret_key()))


def _headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # Our own origin still sees where a form came from (a browser then sends a real Origin
    # with it, not "null"); no other site is told a page's address, with its token.
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
    # Pages show addresses and counts; only the archive says it may be cached.
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _not_found(_error):
    return page("not_found.html", 404)


def _too_large(_error):
    return page("problem.html", 413, title="Too much", link=None, message="That was more than any of our forms sends.")


def create_app_from_env() -> Flask:
    """For gunicorn, `'worker.web:create_app_from_env()'`: each worker process builds
    its settings and engine when it starts, after the fork, so no pool is shared."""
    settings = load_settings()
    engine = create_db_engine(settings.database_url, create=False)
    if current_revision(engine) != head_revision():
        raise ConfigError("the database schema is missing or out of date: run `newsletter db upgrade`")
    return create_app(settings, engine)
