"""The Flask app: a public side for readers and an operator side behind a token.

Readers' routes (sign-up, confirm, manage, leave a region: readers.py; unsubscribe,
view-online, /healthz here) are reachable from every email, so they stay cheap:
nothing renders a digest on request. Every other route is the operator's (previews of
any week and region set, subscriber counts) and needs NEWSLETTER_OPERATOR_TOKEN, or a
loopback client while no token is set; machine routes (/events/*, /metrics) take the token
only as Bearer, and no route that changes anything takes a request another site's page
made (crosssite.py).
"""

from __future__ import annotations

import hmac
import ipaddress
from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import Flask, Response, abort, render_template, request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import SQLAlchemyError

from worker.bounces.providers import CertificateFetcher, fetch_sns_certificate
from worker.delivery.plan import find_edition
from worker.delivery.variants import VariantStore
from worker.digest import RegionSet, select_sections
from worker.digest.queries import fetch_window_stories
from worker.errors import ConfigError, NewsletterError
from worker.metrics import LedgerCollector
from worker.preview import build_preview, resolve_week
from worker.readers.subscribers import set_status_by_id
from worker.render.cache import Stored
from worker.render.public_copy import public_copy
from worker.settings import Settings, load_settings
from worker.store.db import create_db_engine, current_revision, head_revision, session_scope
from worker.store.models import ChangeVia, Subscriber, SubscriberStatus
from worker.tokens import link_opens, read_unsubscribe_token
from worker.web.crosssite import (
    SAFE_METHODS,
    cross_site_refusal,
    from_elsewhere,
    is_machine_route,
    machine_refusal,
    takes_other_sites,
)
from worker.web.events import register_events
from worker.web.mailer import ConfirmationMailer
from worker.web.operator import register_operator
from worker.web.public import public
from worker.web.ratelimit import RefusedConfirmations, SubscribeLimiter
from worker.web.readers import register_readers

# The digest is shown in an iframe with no permissions at all: no scripts, no
# same-origin access, no forms, even if something slipped past sanitising.
SANDBOX_CSP = "sandbox; default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'"
REALM = 'Basic realm="newsletter operator"'
# A local reverse proxy connects from loopback on behalf of anyone: a request that
# says it was forwarded must not pass as a local one. (A proxy that says nothing
# cannot be told apart: behind one, set the token.)
PROXY_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Real-IP", "Via")


# Readers post small forms: anything bigger is refused before it is read.
MAX_BODY = 64 * 1024
MAX_FORM_PARTS = 100


def create_app(settings: Settings, engine: Engine, *, mailer: ConfirmationMailer | None = None,
               limiter: SubscribeLimiter | None = None,
               sns_certificates: CertificateFetcher = fetch_sns_certificate) -> Flask:
    app = Flask(__name__)
    app.config["NEWSLETTER_SETTINGS"] = settings
    app.config.update(MAX_CONTENT_LENGTH=MAX_BODY, MAX_FORM_MEMORY_SIZE=MAX_BODY, MAX_FORM_PARTS=MAX_FORM_PARTS)
    mailer = mailer or ConfirmationMailer(engine, settings)
    app.extensions["newsletter_mailer"] = mailer
    operator_token = settings.operator_token.get_secret_value().encode() if settings.operator_token else b""

    own_origins = frozenset({_origin_of(settings.public_url)})

    @app.before_request
    def _operator_only():
        # Deny by default: a new route is the operator's until marked public.
        view = app.view_functions.get(request.endpoint)
        if view is None:
            return None
        machine = is_machine_route(request.url_rule.rule)
        if (request.method not in SAFE_METHODS and not getattr(view, "other_sites", False)
                and from_elsewhere(request, own_origins)):
            if machine:
                return cross_site_refusal()
            return Response(render_template("problem.html", settings=settings, title="Not from here",
                                            message="This form can only be sent from our own page.",
                                            link=(request.path, "Open the page again")),
                            status=403, mimetype="text/html")
        if machine:
            return None if getattr(view, "public", False) else machine_refusal(request, operator_token)
        if getattr(view, "public", False):
            return None
        if operator_token:
            if hmac.compare_digest(_presented_token(), operator_token):
                return None
            return Response("This page needs the operator token.\n", status=401, mimetype="text/plain",
                            headers={"WWW-Authenticate": REALM})
        if _is_local() and _loopback_name(request.host):
            return None
        return Response("Operator pages are served only to loopback clients, asking for localhost, 127.0.0.1 or "
                        "[::1], while no operator token is set: set NEWSLETTER_OPERATOR_TOKEN to reach them from "
                        "elsewhere.\n", status=403, mimetype="text/plain")

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        # Pages show addresses and counts; only the archive says it may be cached.
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.errorhandler(404)
    def _not_found(_error):
        return render_template("not_found.html", settings=settings), 404

    @app.errorhandler(413)
    def _too_large(_error):
        return render_template("problem.html", settings=settings, title="Too much", link=None,
                               message="That was more than any of our forms sends."), 413

    limiter = limiter or SubscribeLimiter(settings)
    register_readers(app, settings, engine, mailer=mailer, limiter=limiter)
    # Bounces and complaints posted by relays (worker/web/events.py).
    register_events(app, settings, engine, fetch_certificate=sns_certificates)

    # Readers

    @app.get("/healthz")
    @public
    def healthz():
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except SQLAlchemyError:
            return Response("database unavailable\n", status=503, mimetype="text/plain")
        return Response("ok\n", mimetype="text/plain")

    @app.get("/unsubscribe/<token>")
    @public
    def unsubscribe_confirm(token: str):
        subscriber = _subscriber_for(token)
        # GET never changes anything: link scanners and prefetchers follow links.
        return render_template("unsubscribe.html", subscriber=subscriber, token=token, done=False,
                               settings=settings)

    @app.post("/unsubscribe/<token>")
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
        set_status_by_id(engine, subscriber.id, SubscriberStatus.UNSUBSCRIBED, via=via)
        return render_template("unsubscribe.html", subscriber=subscriber, token=token, done=True,
                               settings=settings)

    @app.get("/archive/<edition>/<variant>")
    @public
    def archive(edition: str, variant: str):
        # Only what was sent, as it was sent: rendering here would let anyone make the
        # server render any week and region set, and later story edits would show.
        codes = _codes(variant)
        row = find_edition(engine, edition)
        # Only the spelling the emails carry ('RU-UA'): one URL per page, for caches too.
        if row is None or variant != RegionSet(codes).key:
            abort(404)
        stored = VariantStore(engine, edition_id=row.id, edition_key=row.key).get(codes)
        if isinstance(stored, Stored):  # missing, still rendering, or rendered empty
            abort(404)
        response = _anonymous_page(stored, row.key, variant)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response

    # Operator

    @app.get("/")
    def index():
        window = _window(request.args.get("week"))
        with session_scope(engine) as session:
            sets = session.execute(
                select(Subscriber.regions, func.count())
                .where(Subscriber.status == SubscriberStatus.ACTIVE.value)
                .group_by(Subscriber.regions).order_by(func.count().desc(), Subscriber.regions)
            ).all()
            stories = fetch_window_stories(session, window)
        rows = []
        for regions, count in sets:
            region_set = RegionSet.stored(regions)
            selection = select_sections(stories, region_set.codes, per_region=settings.stories_per_region)
            rows.append({"key": region_set.key, "regions": region_set.text, "subscribers": count,
                         "stories": selection.story_count})
        return render_template("index.html", window=window, rows=rows, settings=settings)

    # The ledger's rows by state, counted when scraped; the worker's own counters are on
    # its NEWSLETTER_METRICS_PORT (worker/metrics.py). Operator-only, like every unmarked route.
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LedgerCollector(engine))
    # Confirmation mails the mailbox and domain limits held back (ratelimit.py), from Redis.
    registry.register(RefusedConfirmations(limiter))

    @app.get("/metrics")
    def metrics():
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)

    # Editions, held editions to approve or discard, sources' health (worker/web/operator.py).
    register_operator(app, settings, engine)

    @app.get("/preview/<week>/<variant>")
    def preview_page(week: str, variant: str):
        result = _preview(week, variant)
        headers = result.composed.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        return render_template("preview.html", result=result, headers=headers, week=week,
                               variant=variant, settings=settings)

    @app.get("/preview/<week>/<variant>/html")
    def preview_html(week: str, variant: str):
        result = _preview(week, variant)
        return Response(result.composed.digest.html, mimetype="text/html",
                        headers={"Content-Security-Policy": SANDBOX_CSP})

    def _anonymous_page(rendered, edition: str, variant: str) -> Response:
        # No personal data and no reader's links: a sign-up link for these regions instead.
        signup = f"{settings.public_url}/subscribe?regions={','.join(rendered.regions)}"
        return Response(public_copy(rendered, signup_url=signup, newsletter_name=settings.newsletter_name),
                        mimetype="text/html", headers={"Content-Security-Policy": SANDBOX_CSP})

    def _window(week: str | None):
        try:
            return resolve_week(week, settings, datetime.now(UTC))
        except (NewsletterError, OverflowError):
            # OverflowError: a week at the edge of the calendar (9999-W52) has no next Monday.
            abort(404)

    def _codes(variant: str) -> tuple[str, ...]:
        try:
            codes = RegionSet.from_key(variant).codes
        except ValueError:
            abort(404)
        if not codes:
            abort(404)
        return codes

    def _preview(week: str, variant: str):
        window = _window(week)
        try:
            return build_preview(engine, settings, window=window, regions=_codes(variant))
        except NewsletterError:
            abort(404)

    def _subscriber_for(token: str) -> Subscriber:
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        link = read_unsubscribe_token(secret, token) if secret else None
        if link is None:
            abort(400, "This unsubscribe link is not valid.")
        with session_scope(engine) as session:
            subscriber = session.get(Subscriber, link.subscriber_id)
        # Purged since, or a row the link was not made for: nothing of theirs left to change.
        if subscriber is None or not link_opens(link, key=subscriber.link_key, legacy=subscriber.legacy_links):
            abort(Response(render_template("problem.html", settings=settings, title="This link is no longer valid",
                                           message="We hold nothing for this link any more.", link=None),
                           status=410, mimetype="text/html"))
        return subscriber

    return app


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


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


def create_app_from_env() -> Flask:
    """For gunicorn, `'worker.web:create_app_from_env()'`: each worker process builds
    its settings and engine when it starts, after the fork, so no pool is shared."""
    settings = load_settings()
    engine = create_db_engine(settings.database_url, create=False)
    if current_revision(engine) != head_revision():
        raise ConfigError("the database schema is missing or out of date: run `newsletter db upgrade`")
    return create_app(settings, engine)
