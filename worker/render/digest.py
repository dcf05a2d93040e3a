"""Render one variant (edition x ordered region set) once: Jinja2, then inline CSS.

Everything personal is left as tokens (see personalise.py), so the expensive
steps here run once per variant, never once per subscriber.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from zoneinfo import ZoneInfo

from markupsafe import Markup, escape

from worker import i18n
from worker.digest import RegionSet, Selection, Window
from worker.errors import HeaderInjectionError, NewsletterError
from worker.render.clip import FULL, GMAIL_CLIP_BYTES, SEND_LIMIT_BYTES, Trim, fits, sent_html_bytes, trims
from worker.render.env import get_template
from worker.render.links import ClickLinks
from worker.render.personalise import leave_key, new_nonce, tokens
from worker.render.sections import SectionCache, inline_whole, section_mark
from worker.settings import Settings
from worker.text import contains_control, visible_line

log = logging.getLogger(__name__)
TEMPLATE = "weekly_digest"
# Mail clients show about this much of a subject in a list; the brand is in From.
SUBJECT_MAX = 70


@dataclass(frozen=True)
class RenderedVariant:
    edition_key: str
    regions: tuple[str, ...]
    subject: str
    html: str
    text: str
    story_count: int
    # The markers' nonce (see personalise.py): the markers in html and text carry it.
    nonce: str
    # How it was shortened to pass under Gmail's clip (clip.py); FULL: not at all, or
    # loaded from the store, which keeps what was sent but not how it was cut.
    trim: Trim = field(default=FULL, compare=False)
    # The HTML part of its largest copy as sent, in bytes (clip.py); 0: not measured here.
    sent_bytes: int = field(default=0, compare=False)
    # When html was shortened: the whole edition, same markers, for the archive page the
    # "N more stories online" links lead to. None: html is the whole edition.
    online_html: str | None = field(default=None, compare=False)
    # The language of our words in it (worker/i18n.py).
    language: str = i18n.DEFAULT

    @property
    def whole_html(self) -> str:
        return self.online_html or self.html

    @property
    def tokens(self) -> dict[str, str]:
        return tokens(self.nonce, self.regions)

    @property
    def key(self) -> str:
        return RegionSet(self.regions).key

    @property
    def html_bytes(self) -> int:
        """The HTML part's size as Gmail measures it: of its largest copy as sent when this
        process measured it (clip.py), else of the variant's HTML itself."""
        return self.sent_bytes or len(self.html.encode("utf-8"))

    @property
    def clipped(self) -> bool:
        return max(self.html_bytes, self.sent_bytes) > GMAIL_CLIP_BYTES


class TooLargeToSend(NewsletterError):
    """Even the shortest form of a variant would pass Gmail's clip."""


def render_variant(
    *, selection: Selection, window: Window, edition_key: str, settings: Settings,
    sections: SectionCache | None = None, clicks: ClickLinks | None = None, language: str = i18n.DEFAULT,
) -> RenderedVariant:
    """The variant as every copy of it is sent: whole when its largest copy's HTML part fits
    under Gmail's clip, else the least shortened form that fits (clip.py). With `sections`
    (the edition's), its HTML is assembled from sections inlined once per edition; with
    `clicks`, story links go through the counting redirect; our words are in `language`."""
    nonce = new_nonce()

    def render(trim: Trim) -> RenderedVariant:
        return _render(selection=selection, window=window, edition_key=edition_key, settings=settings,
                       nonce=nonce, trim=trim, sections=sections, clicks=clicks, language=language)

    whole = render(FULL)
    if fits(whole.sent_bytes):
        return whole
    levels = trims(max(len(section.stories) for section in selection.shown))
    low, high, found = 0, len(levels) - 1, None
    while low <= high:
        middle = (low + high) // 2
        candidate = render(levels[middle])
        if fits(candidate.sent_bytes):
            found, high = candidate, middle - 1
        else:
            low = middle + 1
    if found is None:
        raise TooLargeToSend(f"{edition_key} {'-'.join(selection.regions)}: even its shortest form is over "
                             f"{SEND_LIMIT_BYTES // 1024} KB of HTML")
    log.warning("%s %s: %.1f KB of HTML as sent, over the %d KB limit under Gmail's clip; shortened to %.1f KB "
                "(%s stories a section, summaries cut to %s characters)", edition_key, "-".join(selection.regions),
                whole.sent_bytes / 1024, SEND_LIMIT_BYTES // 1024, found.sent_bytes / 1024,
                "all" if found.trim.stories is None else found.trim.stories, found.trim.summary)
    return replace(found, online_html=whole.html)


def _render(*, selection: Selection, window: Window, edition_key: str, settings: Settings, nonce: str,
            trim: Trim, sections: SectionCache | None = None, clicks: ClickLinks | None = None,
            language: str = i18n.DEFAULT) -> RenderedVariant:
    context = build_context(selection=selection, window=window, edition_key=edition_key, settings=settings,
                            nonce=nonce, trim=trim, clicks=clicks, language=language)
    folder = settings.templates_dir
    subject = check_header_text("subject", headline(
        get_template(folder, f"{TEMPLATE}/subject.txt", language).render(context)))
    body = get_template(folder, f"{TEMPLATE}/body.html", language).render(context)
    inline = sections.inline if sections is not None else inline_whole
    html = inline(body, nonce=nonce, inliner=settings.css_inliner)
    text = get_template(folder, f"{TEMPLATE}/body.txt", language).render(context)
    key = RegionSet(selection.regions).key
    return RenderedVariant(
        edition_key=edition_key,
        regions=selection.regions,
        subject=subject,
        html=html,
        text=text.strip() + "\n",
        story_count=selection.story_count,
        nonce=nonce,
        trim=trim,
        language=language,
        sent_bytes=sent_html_bytes(html, nonce=nonce, regions=selection.regions, edition_key=edition_key,
                                   variant_key=key, settings=settings, language=language),
    )


def build_context(*, selection: Selection, window: Window, edition_key: str, settings: Settings,
                  nonce: str, trim: Trim = FULL, clicks: ClickLinks | None = None,
                  language: str = i18n.DEFAULT) -> dict:
    tz = settings.tz
    _ = i18n.gettext_for(language)
    names = {code: i18n.region_name(code, language, settings.region_names) for code in selection.regions}
    personal = tokens(nonce, selection.regions)
    sections = []
    quiet = bool(selection.wider)
    for section in selection.shown:
        shown = section.stories if trim.stories is None else section.stories[:trim.stories]
        # Codes are ISO 3166 alpha-2, validated at import: nothing else goes into the URL.
        more_url = settings.region_url.replace("{region}", section.region) if section.region else ""
        sections.append({
            "region": section.region,
            "region_name": names[section.region] if section.region else (
                _("Most read this week") if selection.by_opens else _("This week across the site")),
            "more_url": more_url or None,
            # A shortened section's stories left out, and where they are: the region's page
            # on the site, else the edition online (a marker, as every copy's link differs).
            "hidden": len(section.stories) - len(shown),
            "hidden_url": more_url or personal["view_online_url"],
            # A marker: this reader's "Stop <region> news" link (personalise.py).
            "leave_url": personal[leave_key(section.region)] if section.region else None,
            "stories": [_story(story, tz, trim.summary, _link(story, section.region, clicks), language)
                        for story in shown],
        })
    titles = [visible_line(story.title) for section in selection.shown for story in section.stories]
    # What this mail shows, once shortened under Gmail's clip (the rest is online).
    shown = [story["title"] for section in sections for story in section["stories"]]
    region_names = i18n.prose_list([names[s["region"]] for s in sections if s["region"]] or list(names.values()),
                                   language)
    return {
        "lang": language,
        "newsletter": {
            "name": settings.newsletter_name,
            "brand_color": settings.brand_color,
            "postal_address": settings.postal_address,
            "public_url": settings.public_url,
            "site_url": settings.site_url or None,
        },
        "edition": {
            "key": edition_key,
            "label": window.label,
            "date_range": i18n.date_range(window.first_day, window.last_day, language),
        },
        "regions": [{"code": code, "name": names[code]} for code in selection.regions],
        "region_names": region_names,
        "story_count": selection.story_count,
        "shown_count": len(shown),
        "sections": sections,
        # A quiet week's digest (NEWSLETTER_QUIET_WEEK=wider): what it says instead, and the
        # reader's "Stop <region> news" links, which no section carries then.
        "quiet": {"by_opens": selection.by_opens,
                  "leave": [{"name": names[code], "url": personal[leave_key(code)]} for code in selection.regions]}
        if quiet else None,
        "preheader": _preheader(shown, region_names, language, quiet=quiet),
        # The subject's: the first story of the reader's first region.
        "top_story": {"title": titles[0] if titles else ""},
        "personal": personal,
        "section_mark": section_mark(nonce),
    }


def _link(story, region: str, clicks: ClickLinks | None) -> str:
    """The story's link: straight to it, or through the click redirect under the section's
    region (a quiet week's: the story's own first region)."""
    region = region or (story.regions[0] if story.regions else "")
    return clicks.url(story.id, region) if clicks and region else story.url


def _story(story, tz: ZoneInfo, summary_cut: int | None, url: str, language: str) -> dict:
    summary_html, summary_text = story.summary_html, story.summary_text
    if summary_cut is not None and len(" ".join(summary_text.split())) > summary_cut:
        # Cut as text at a word: a cut through sanitised markup could leave it unbalanced.
        summary_text = headline(summary_text, summary_cut) if summary_cut else ""
        summary_html = f"<p>{escape(summary_text)}</p>" if summary_text else ""
    return {
        "title": visible_line(story.title),
        "url": url,
        "date_label": i18n.day(story.published_at.astimezone(tz), language),
        "source": story.source,
        # Sanitised with nh3 at ingestion, or our own escaped cut: the only Markup in the context.
        "summary_html": Markup(_as_block(summary_html)),
        "summary_text": summary_text,
        "image_url": story.image_url,
        # Its feed's language, when stated: a screen reader then reads it with that voice.
        "lang": story.language,
    }


def headline(text: str, limit: int = SUBJECT_MAX) -> str:
    """`text` on one line, cut at a word boundary with an ellipsis to at most `limit`
    characters. A title is data: a control character in it becomes a space, an invisible
    format character (a bidi override) goes."""
    text = visible_line(text)
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    if text[limit - 1] != " " and " " in cut:
        cut = cut.rsplit(" ", 1)[0]
    return (cut.rstrip(" ,;:.-–—") or text[:limit - 1]) + "…"


def _as_block(summary_html: str) -> str:
    # Bare inline text gets a paragraph so every story is spaced the same way.
    if not summary_html or summary_html.startswith(("<p", "<ul", "<ol", "<blockquote")):
        return summary_html
    return f"<p>{summary_html}</p>"


def _preheader(titles: list[str], region_names: str, language: str, *, quiet: bool = False) -> str:
    """What the inbox shows after the subject: the stories after the subject's own (the
    subject is the first title), else where this week's news is from; a quiet week says so."""
    _, ngettext = i18n.gettext_for(language), i18n.ngettext_for(language)
    if quiet:
        return _("Nothing new from %(regions)s this week") % {"regions": region_names}
    after = titles[1:]
    if not after:
        return _("This week from %(regions)s") % {"regions": region_names}
    rest = len(after) - 2
    if rest <= 0:
        return " · ".join(after[:2])
    return ngettext("%(titles)s and %(num)d more", "%(titles)s and %(num)d more", rest) % {
        "titles": " · ".join(after[:2]), "num": rest}


def check_header_text(what: str, value: str) -> str:
    """Refuse CR, LF, NUL and every other control character (C0, DEL, C1, U+2028/9)."""
    if contains_control(value):
        raise HeaderInjectionError(f"{what} contains a control character or line break: {value[:60]!r}")
    return value
