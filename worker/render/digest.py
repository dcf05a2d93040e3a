"""Render one variant (edition x ordered region set) once: Jinja2, then inline CSS.

Everything personal is left as tokens (see personalise.py), so the expensive
steps here run once per variant, never once per subscriber.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

from markupsafe import Markup

from worker.digest import RegionSet, Selection, Window
from worker.errors import HeaderInjectionError
from worker.regions import region_name
from worker.render.env import get_template
from worker.render.inline import inline_css
from worker.render.personalise import leave_key, new_nonce, tokens
from worker.settings import Settings
from worker.text import contains_control, single_line

# Gmail clips messages whose HTML is larger than about 102 KB.
GMAIL_CLIP_BYTES = 102 * 1024
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

    @property
    def tokens(self) -> dict[str, str]:
        return tokens(self.nonce, self.regions)

    @property
    def key(self) -> str:
        return RegionSet(self.regions).key

    @property
    def html_bytes(self) -> int:
        return len(self.html.encode("utf-8"))

    @property
    def clipped(self) -> bool:
        return self.html_bytes > GMAIL_CLIP_BYTES


def render_variant(
    *, selection: Selection, window: Window, edition_key: str, settings: Settings
) -> RenderedVariant:
    nonce = new_nonce()
    context = build_context(selection=selection, window=window, edition_key=edition_key, settings=settings,
                            nonce=nonce)
    folder = settings.templates_dir
    subject = check_header_text("subject", headline(get_template(folder, f"{TEMPLATE}/subject.txt").render(context)))
    html = get_template(folder, f"{TEMPLATE}/body.html").render(context)
    text = get_template(folder, f"{TEMPLATE}/body.txt").render(context)
    return RenderedVariant(
        edition_key=edition_key,
        regions=selection.regions,
        subject=subject,
        html=inline_css(html, inliner=settings.css_inliner),
        text=text.strip() + "\n",
        story_count=selection.story_count,
        nonce=nonce,
    )


def build_context(*, selection: Selection, window: Window, edition_key: str, settings: Settings,
                  nonce: str) -> dict:
    tz = settings.tz
    names = {code: region_name(code, settings.region_names) for code in selection.regions}
    personal = tokens(nonce, selection.regions)
    sections = [
        {
            "region": section.region,
            "region_name": names[section.region],
            # Codes are ISO 3166 alpha-2, validated at import: nothing else goes into the URL.
            "more_url": settings.region_url.replace("{region}", section.region) or None,
            # A marker: this reader's "Stop <region> news" link (personalise.py).
            "leave_url": personal[leave_key(section.region)],
            "stories": [
                {
                    "title": story.title,
                    "url": story.url,
                    "date_label": _day(story.published_at, tz),
                    "source": story.source,
                    # Sanitised with nh3 at ingestion; the only Markup in the context.
                    "summary_html": Markup(_as_block(story.summary_html)),
                    "summary_text": story.summary_text,
                    "image_url": story.image_url,
                }
                for story in section.stories
            ],
        }
        for section in selection.sections
    ]
    titles = [story["title"] for section in sections for story in section["stories"]]
    return {
        "lang": "en",
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
            "date_range": date_range(window.first_day, window.last_day),
        },
        "regions": [{"code": code, "name": names[code]} for code in selection.regions],
        "region_names": prose_list([names[s["region"]] for s in sections] or list(names.values())),
        "story_count": selection.story_count,
        "sections": sections,
        "preheader": _preheader(titles),
        # The subject's: the first story of the reader's first region.
        "top_story": sections[0]["stories"][0] if sections else {"title": ""},
        "personal": personal,
    }


def headline(text: str, limit: int = SUBJECT_MAX) -> str:
    """`text` on one line, cut at a word boundary with an ellipsis to at most `limit`
    characters. A title is data: a control character in it becomes a space."""
    text = single_line(text)
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


def _day(moment: datetime, tz: ZoneInfo) -> str:
    local = moment.astimezone(tz)
    return f"{local.day} {local:%b %Y}"


def date_range(first: date, last: date) -> str:
    """'27 Jan – 2 Feb 2025', '3 – 9 Feb 2025', '30 Dec 2024 – 5 Jan 2025'."""
    if first.year != last.year:
        return f"{first.day} {first:%b %Y} – {last.day} {last:%b %Y}"
    if first.month != last.month:
        return f"{first.day} {first:%b} – {last.day} {last:%b %Y}"
    if first == last:
        return f"{first.day} {first:%b %Y}"
    return f"{first.day} – {last.day} {last:%b %Y}"


def prose_list(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _preheader(titles: list[str]) -> str:
    shown = " · ".join(titles[:2])
    rest = len(titles) - 2
    return f"{shown} and {rest} more" if rest > 0 else shown


def check_header_text(what: str, value: str) -> str:
    """Refuse CR, LF, NUL and every other control character (C0, DEL, C1, U+2028/9)."""
    if contains_control(value):
        raise HeaderInjectionError(f"{what} contains a control character or line break: {value[:60]!r}")
    return value
