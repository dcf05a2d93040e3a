"""Local preview: exactly the production render path, nothing sent."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, select

from worker.clicks import opens_of
from worker.clock import utcnow
from worker.digest import (
    Selection,
    Window,
    previous_week,
    select_sections,
    select_wider,
    week_window,
    weekly_edition_key,
)
from worker.digest.queries import fetch_window_stories
from worker.errors import NothingToSend, UsageError
from worker.readers.subscribers import InvalidSubscriber, check_address
from worker.render.compose import Addressee, Composed, compose
from worker.render.digest import GMAIL_CLIP_BYTES, RenderedVariant, render_variant
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Subscriber

# Preview works before a key is configured; links it makes are not valid for sending.
PREVIEW_SECRET = "preview-only-not-a-secret"
SAMPLE_READER = Addressee(email="reader@example.org", name="Sample Reader", subscriber_id=None)


@dataclass(frozen=True)
class Preview:
    window: Window
    selection: Selection
    variant: RenderedVariant
    composed: Composed


def resolve_week(week: str | None, settings: Settings, now: datetime | None = None) -> Window:
    try:
        return week_window(week or previous_week(now or utcnow(), settings.tz), settings.tz)
    except ValueError as exc:
        raise UsageError(f"--week: {exc}") from None


def build_preview(
    engine: Engine, settings: Settings, *, window: Window, regions: tuple[str, ...] | None = None,
    email: str | None = None, language: str | None = None,
) -> Preview:
    """The digest as `email` (in their language) or a sample reader of `regions` (in
    `language`, else NEWSLETTER_LANGUAGE) would get it."""
    addressee = SAMPLE_READER
    if email is not None:
        addressee, regions, own = _subscriber(engine, email)
        language = language or own
    language = language or settings.language
    if not regions:
        raise UsageError("give --regions or --email")
    with session_scope(engine) as session:
        stories = fetch_window_stories(session, window, regions)
    selection = select_sections(stories, regions, per_region=settings.stories_per_region)
    if selection.is_empty and settings.wider:
        with session_scope(engine) as session:
            week = fetch_window_stories(session, window)
        selection = select_wider(week, opens_of(engine, [story.id for story in week]), regions,
                                 limit=settings.stories_per_region)
    if selection.is_empty:
        raise NothingToSend(
            f"no stories for {' '.join(regions)} in {window.label}: "
            "such subscribers are skipped (no-stories)" if not settings.wider else
            f"no stories at all in {window.label}: nobody gets a digest"
        )
    variant = render_variant(selection=selection, window=window,
                             edition_key=weekly_edition_key(window.label), settings=settings, language=language)
    secret = settings.optional_secret_key() or PREVIEW_SECRET
    composed = compose(variant, addressee, settings=settings, secret=secret)
    return Preview(window=window, selection=selection, variant=variant, composed=composed)


def _subscriber(engine: Engine, email: str) -> tuple[Addressee, tuple[str, ...], str | None]:

    try:
        _, key = check_address(email)
    except InvalidSubscriber as exc:
        raise UsageError(f"--email: {exc}") from None
    with session_scope(engine) as session:
        row = session.scalar(select(Subscriber).where(Subscriber.email_key == key))
        if row is None:
            raise UsageError(f"--email: no subscriber {email.strip()!r}")
        return Addressee(row.email, row.name, row.id, row.link_key), tuple(row.region_list), row.language


def write_preview(preview: Preview, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / f"digest.{name}" for name in ("html", "txt", "eml")}
    paths["html"].write_text(preview.composed.digest.html, encoding="utf-8")
    paths["txt"].write_text(preview.composed.digest.text, encoding="utf-8")
    paths["eml"].write_bytes(preview.composed.data)
    return paths


def size_line(variant: RenderedVariant) -> str:

    kb = variant.html_bytes / 1024
    if variant.clipped:
        return (f"WARNING: the HTML part is {kb:.1f} KB, over the {GMAIL_CLIP_BYTES // 1024} KB "
                "at which Gmail clips the message: lower NEWSLETTER_STORIES_PER_REGION or shorten summaries")
    return f"HTML size: {kb:.1f} KB of the {GMAIL_CLIP_BYTES // 1024} KB at which Gmail clips"
