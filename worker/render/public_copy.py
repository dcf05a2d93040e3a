"""The public copy of a sent variant ("view online", /archive/...): the edition as mailed,
without a reader in it.

A reader's copy has links only that reader can use (manage, unsubscribe, "Stop <region>
news") and says whom it was sent to. The public copy has nobody's: each paragraph that
holds such a link or the address is dropped, and the footer's links become one sign-up link
for the variant's regions, the archive and each region's Atom feed (with a feed link in the
head, for readers that discover feeds). The paragraphs are found by their values, which are
random per page, so no story can spell one out.
"""

from __future__ import annotations

import html
import re
import secrets
from dataclasses import dataclass, replace

from worker.i18n import gettext_for
from worker.render.personalise import Recipient, personalise

# The document's own head: the stored copy starts with it, before any story's text.
_HEAD = re.compile(r"<head\b[^>]*>", re.IGNORECASE)


@dataclass(frozen=True)
class Follow:
    """Where else to read: the archive's list, and each region's (name, Atom feed URL)."""

    archive_url: str
    feeds: tuple[tuple[str, str], ...]


def public_copy(rendered, *, signup_url: str, newsletter_name: str, follow: Follow | None = None) -> str:
    """The HTML of `rendered` (a stored variant) for anyone: no reader's links or address."""
    drop, footer = f"nl-public-{secrets.token_hex(8)}", f"nl-public-{secrets.token_hex(8)}"
    anonymous = Recipient(email=drop, name=None, unsubscribe_url=footer, view_online_url=footer, manage_url=footer,
                          leave_urls=tuple((code, drop) for code in rendered.regions), language=rendered.language)
    # The whole edition, also when the mailed copy was shortened under Gmail's clip.
    page = personalise(replace(rendered, html=rendered.whole_html), anonymous).html
    _ = gettext_for(rendered.language)
    links = [(signup_url, _("Sign up for %(name)s") % {"name": newsletter_name})]
    if follow:
        links += [(follow.archive_url, _("Past digests")),
                  *((url, _("Follow %(region)s (Atom)") % {"region": name}) for name, url in follow.feeds)]
        page = _HEAD.sub(lambda m: m[0] + _feed_links(follow, newsletter_name), page, count=1)
    line = " · ".join(f'<a href="{html.escape(url)}">{html.escape(text)}</a>' for url, text in links)
    page = _paragraphs(footer).sub(lambda m: f"{m['open']}{line}</p>", page, count=1)
    page = _paragraphs(footer).sub("", page)
    return _paragraphs(drop).sub("", page)


def _feed_links(follow: Follow, newsletter_name: str) -> str:
    return "".join(f'<link rel="alternate" type="application/atom+xml" href="{html.escape(url)}" '
                   f'title="{html.escape(f"{newsletter_name}: {name}")}">' for name, url in follow.feeds)


def _paragraphs(value: str) -> re.Pattern[str]:
    """Each <p> (with its attributes, as the inliner left them) whose content holds `value`:
    it cannot reach past its own </p>."""
    inside = r"(?:(?!</p>).)*?"
    return re.compile(rf"(?P<open><p\b[^>]*>){inside}{re.escape(value)}{inside}</p>", re.DOTALL)
