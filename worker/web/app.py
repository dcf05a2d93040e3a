"""A small Flask app. Bound to 127.0.0.1 by default; nothing here needs a login
because nothing here shows personal data except to the token's holder."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Flask, Response, abort, render_template, request
from sqlalchemy import Engine, func, select

from worker.digest import select_sections
from worker.digest.queries import fetch_window_stories
from worker.errors import NewsletterError
from worker.ingest.subscribers import set_status_by_id
from worker.preview import build_preview, resolve_week
from worker.render.digest import parse_variant_key, render_variant, variant_key
from worker.render.personalise import Recipient, personalise
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Subscriber, SubscriberStatus
from worker.tokens import read_unsubscribe_token

# The digest is shown in an iframe with no permissions at all: no scripts, no
# same-origin access, no forms, even if something slipped past sanitising.
SANDBOX_CSP = "sandbox; default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'"


def create_app(settings: Settings, engine: Engine) -> Flask:
    app = Flask(__name__)
    app.config["NEWSLETTER_SETTINGS"] = settings

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        return response

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
            codes = tuple(regions.split())
            selection = select_sections(stories, codes, per_region=settings.stories_per_region)
            rows.append({"key": variant_key(codes), "regions": " ".join(codes), "subscribers": count,
                         "stories": selection.story_count})
        return render_template("index.html", window=window, rows=rows, settings=settings)

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

    @app.get("/unsubscribe/<token>")
    def unsubscribe_confirm(token: str):
        subscriber = _subscriber_for(token)
        # GET never changes anything: link scanners and prefetchers follow links.
        return render_template("unsubscribe.html", subscriber=subscriber, token=token, done=False,
                               settings=settings)

    @app.post("/unsubscribe/<token>")
    def unsubscribe(token: str):
        subscriber = _subscriber_for(token)
        # RFC 8058: the body is "List-Unsubscribe=One-Click"; the confirm page's form
        # posts the same field. Either way the answer is 200, never a redirect.
        set_status_by_id(engine, subscriber.id, SubscriberStatus.UNSUBSCRIBED)
        return render_template("unsubscribe.html", subscriber=subscriber, token=token, done=True,
                               settings=settings)

    @app.get("/archive/<edition>/<variant>")
    def archive(edition: str, variant: str):
        if not edition.startswith("weekly-"):
            abort(404)
        codes = _codes(variant)
        stored = _stored_variant(edition, codes)
        if stored is not None:
            return _anonymous_page(stored, edition, variant)
        window = _window(edition.removeprefix("weekly-"))
        with session_scope(engine) as session:
            stories = fetch_window_stories(session, window, codes)
        selection = select_sections(stories, codes, per_region=settings.stories_per_region)
        if selection.is_empty:
            abort(404)
        rendered = render_variant(selection=selection, window=window, edition_key=edition, settings=settings)
        return _anonymous_page(rendered, edition, variant)

    def _stored_variant(edition_key: str, codes: tuple[str, ...]):
        """What was sent, if this edition was sent: later story edits do not change it."""
        from worker.delivery.plan import find_edition
        from worker.delivery.variants import VariantStore

        row = find_edition(engine, edition_key)
        if row is None:
            return None
        found = VariantStore(engine, edition_id=row.id, edition_key=row.key).get(codes)
        return found if not isinstance(found, str) else None

    def _anonymous_page(rendered, edition: str, variant: str) -> Response:
        # No personal data: a neutral greeting and links that lead back to this page.
        here = f"{settings.public_url}/archive/{edition}/{variant}"
        anonymous = Recipient(email="you", name=None, unsubscribe_url=here, view_online_url=here)
        return Response(personalise(rendered, anonymous).html, mimetype="text/html",
                        headers={"Content-Security-Policy": SANDBOX_CSP})

    def _window(week: str | None):
        try:
            return resolve_week(week, settings, datetime.now(UTC))
        except NewsletterError:
            abort(404)

    def _codes(variant: str) -> tuple[str, ...]:
        try:
            codes = parse_variant_key(variant)
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
        subscriber_id = read_unsubscribe_token(secret, token) if secret else None
        if subscriber_id is None:
            abort(400, "This unsubscribe link is not valid.")
        with session_scope(engine) as session:
            subscriber = session.get(Subscriber, subscriber_id)
        if subscriber is None:
            # A valid signature for someone since purged: nothing left to change.
            abort(400, "This unsubscribe link is no longer valid.")
        return subscriber

    return app
