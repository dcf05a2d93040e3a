"""The public archive: sent digests anyone may read and follow, with no reader in them.

- GET /archive lists sent editions, newest first, with their listed copies (a page at a time);
- GET /archive/<REGION>.atom is an Atom feed of the latest editions that carried a region;
- GET /archive/<edition>/<variant> shows one stored copy as it was sent ("view online").

Privacy: a copy of one region is always listed; a copy of several regions only once at least
MIN_READERS (5) readers received it, since a rare combination of regions can point at one
person (archive_copies.py). An unlisted copy stays reachable by the "View online" link of the
mails that carried it, as before. Nothing renders here: every page is a stored copy or a list
read with bounded queries, and all of them may be cached.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from datetime import UTC, datetime

from flask import Blueprint, Response, abort, current_app, request, url_for

from worker import i18n
from worker.delivery.plan import find_edition
from worker.delivery.variants import VariantStore
from worker.digest import RegionSet, Window
from worker.i18n import LANGUAGES
from worker.regions import RegionError, normalise_region
from worker.render.cache import Stored
from worker.render.contents import section_titles
from worker.render.public_copy import Follow, public_copy
from worker.web.archive_copies import ArchivedEdition, Copy, ReceivedCounts, archive_page, copy_pages, region_copies
from worker.web.atom import ATOM_TYPE, Entry, Feed, atom_xml
from worker.web.shared import SANDBOX_CSP, page, public, variant_codes, web

bp = Blueprint("archive", __name__)

PER_PAGE = 20
FEED_ENTRIES = 20
# Beyond any archive a weekly newsletter will have; a larger number is a 404, not a query.
MAX_PAGE = 10_000
_PAGE = re.compile(r"[1-9][0-9]{0,4}")
_COUNTS = "newsletter_archive_counts"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@bp.record_once
def _keep_counts(state) -> None:
    state.app.extensions[_COUNTS] = ReceivedCounts()


@bp.get("/archive")
@public
def index():
    number = request.args.get("page", "1")
    # Checked as text first: int() of a 5,000-digit string raises, and a 500 is not an answer.
    if not (_PAGE.fullmatch(number) and int(number) <= MAX_PAGE):
        abort(404)
    editions, more = archive_page(web().engine, _counts(), page=int(number), per_page=PER_PAGE,
                                  language=web().settings.language)
    if not editions and number != "1":
        abort(404)
    # Each edition's single regions first, then its sets, each by name.
    shown = [(_heading(edition), [(url_for(".copy", edition=edition.key, variant=c.key), _names(c.regions))
                                  for c in sorted(copies, key=lambda c: (len(c.regions) > 1, _names(c.regions)))])
             for edition, copies in editions]
    codes = sorted({code for _, copies in editions for c in copies for code in c.regions},
                   key=lambda code: _name(code))
    feeds = [(_name(code), url_for(".feed", region=code)) for code in codes]
    body, status = page("archive.html", editions=shown, feeds=feeds, page=int(number), more=more)
    return Response(body, status=status, mimetype="text/html", headers={"Cache-Control": "public, max-age=300"})


@bp.get("/archive/<region>.atom")
@public
def feed(region: str):
    code = _region(region)
    settings = web().settings
    base = settings.public_url
    name = _name(code)
    shown = region_copies(web().engine, _counts(), code, limit=FEED_ENTRIES, language=web().settings.language)
    entries = [Entry(id=f"{base}/archive/{edition.key}/{code}",  # the same whichever copy it links
                     title=f"{name} · {_heading(edition)}", link=f"{base}/archive/{edition.key}/{copy.key}",
                     updated=copy.created_at) for edition, copy in shown]
    atom = Feed(id=f"{base}/archive/{code}.atom", title=f"{settings.newsletter_name}: {name}",
                author=settings.newsletter_name, self_url=f"{base}/archive/{code}.atom",
                alternate_url=f"{base}/archive", updated=max((e.updated for e in entries), default=_EPOCH),
                entries=tuple(entries))
    response = Response(mimetype=ATOM_TYPE, headers={"Cache-Control": "public, max-age=300"})
    # The inputs, not the body: a conditional GET is answered before any copy is read.
    # A stored copy never changes, so its id stands for its stories.
    response.set_etag(hashlib.sha256(repr((atom, [c.variant_id for _, c in shown])).encode()).hexdigest()[:32])
    if entries:
        response.last_modified = atom.updated
    response.make_conditional(request)
    if response.status_code == 200:
        pages = copy_pages(web().engine, [c.variant_id for _, c in shown])
        entries = [replace(entry, summary=_summary(pages.get(c.variant_id, ""), code, c))
                   for entry, (_, c) in zip(entries, shown, strict=True)]
        response.set_data(atom_xml(replace(atom, entries=tuple(entries))))
    return response


@bp.get("/archive/<edition>/<variant>")
@bp.get("/archive/<edition>/<variant>/<language>")
@public
def copy(edition: str, variant: str, language: str | None = None):
    # Only what was sent, as it was sent: rendering here would let anyone make the
    # server render any week and region set, and later story edits would show.
    codes = variant_codes(variant)
    engine = web().engine
    row = find_edition(engine, edition)
    # Only the spellings the emails carry ('RU-UA', 'RU-UA/ru' for a copy not in the list's
    # own language): one URL per page, for caches too.
    own = web().settings.language
    if row is None or variant != RegionSet(codes).key or language == own or (
            language is not None and language not in LANGUAGES):
        abort(404)
    stored = VariantStore(engine, edition_id=row.id, edition_key=row.key).get(codes, language or own)
    if isinstance(stored, Stored):  # missing, still rendering, or rendered empty
        abort(404)
    # No personal data and no reader's links: a sign-up link for these regions instead.
    settings = web().settings
    base = settings.public_url
    follow = Follow(archive_url=f"{base}/archive",
                    feeds=tuple((_name(code, stored.language), f"{base}/archive/{code}.atom")
                                for code in stored.regions))
    body = public_copy(stored, signup_url=f"{base}/subscribe?regions={','.join(stored.regions)}",
                       newsletter_name=settings.newsletter_name, follow=follow)
    return Response(body, mimetype="text/html",
                    headers={"Content-Security-Policy": SANDBOX_CSP, "Cache-Control": "public, max-age=3600"})


def _counts() -> ReceivedCounts:
    return current_app.extensions[_COUNTS]


def _region(text: str) -> str:
    """An ISO 3166-1 alpha-2 code as the links spell it (upper case); 404 for anything else."""
    try:
        code = normalise_region(text) if len(text) == 2 else ""
    except RegionError:
        code = ""
    if code != text:
        abort(404)
    return code


def _name(code: str, language: str | None = None) -> str:
    """A region's name in `language`, by default the list's own (the archive's pages are in it)."""
    settings = web().settings
    return i18n.region_name(code, language or settings.language, settings.region_names)


def _names(codes: tuple[str, ...]) -> str:
    return ", ".join(_name(code) for code in codes)


def _heading(edition: ArchivedEdition) -> str:
    window = Window.of_edition(edition, web().settings.tz)
    return f"{i18n.date_range(window.first_day, window.last_day, web().settings.language)} ({edition.label})"


def _summary(html: str, code: str, copy: Copy) -> str | None:
    """The region's story titles, one a line, read from the copy the entry links to: its
    only section when it is the region's own, else the section under the region's name."""
    sections = section_titles(html) if html else []
    if copy.regions == (code,) and len(sections) == 1:
        titles = sections[0][1]
    else:
        titles = next((t for heading, t in sections if heading == _name(code)), [])
    return "\n".join(titles) or None
