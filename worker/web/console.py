"""The operator's read-only pages: subscriber counts per region set for a week (/),
the preview of any week and region set, and /metrics. Operator-only like every route
not marked public (guard.py); /metrics is a machine route (Bearer only).

The operator's page with forms (/operator: editions, held editions, sources) is
operator.py's.
"""

from __future__ import annotations

from flask import Blueprint, Response, abort, request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from worker.clock import utcnow
from worker.delivery.plan import active_region_sets
from worker.digest import RegionSet, select_sections
from worker.digest.queries import fetch_window_stories
from worker.errors import NewsletterError
from worker.preview import build_preview, resolve_week
from worker.store.db import session_scope
from worker.web.shared import SANDBOX_CSP, page, variant_codes, web

bp = Blueprint("console", __name__)


@bp.get("/")
def index():
    window = _window(request.args.get("week"))
    settings = web().settings
    with session_scope(web().engine) as session:
        sets = active_region_sets(session)
        stories = fetch_window_stories(session, window)
    rows = []
    for regions, count in sets:
        region_set = RegionSet.stored(regions)
        selection = select_sections(stories, region_set.codes, per_region=settings.stories_per_region)
        rows.append({"key": region_set.key, "regions": region_set.text, "subscribers": count,
                     "stories": selection.story_count})
    return page("index.html", window=window, rows=rows)


@bp.get("/metrics")
def metrics():
    # The ledger's rows by state, counted when scraped; the worker's own counters are on
    # its NEWSLETTER_METRICS_PORT (worker/metrics.py).
    return Response(generate_latest(web().metrics), content_type=CONTENT_TYPE_PLAIN_0_0_4)


@bp.get("/preview/<week>/<variant>")
def preview_page(week: str, variant: str):
    result = _preview(week, variant)
    headers = result.composed.data.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    return page("preview.html", result=result, headers=headers, week=week, variant=variant)


@bp.get("/preview/<week>/<variant>/html")
def preview_html(week: str, variant: str):
    result = _preview(week, variant)
    return Response(result.composed.digest.html, mimetype="text/html",
                    headers={"Content-Security-Policy": SANDBOX_CSP})


def _window(week: str | None):
    try:
        return resolve_week(week, web().settings, utcnow())
    except (NewsletterError, OverflowError):
        # OverflowError: a week at the edge of the calendar (9999-W52) has no next Monday.
        abort(404)


def _preview(week: str, variant: str):
    window = _window(week)
    try:
        return build_preview(web().engine, web().settings, window=window, regions=variant_codes(variant))
    except NewsletterError:
        abort(404)
