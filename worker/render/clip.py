"""Gmail's clip: a variant whose HTML part would pass it is shortened before anything is sent.

Gmail hides everything after about 102 KB of a message's HTML, footer and unsubscribe link
included, behind "[Message clipped]". What is measured here is the HTML part as it goes on
the wire: inlined, quoted-printable encoded, and filled with the longest personal values a
copy can carry (a name and an address of the most bytes an import lets through, the longest
tokens), so no reader's copy is larger than the measured one. The budget keeps a margin
under the clip because Gmail does not publish what it counts (KB of 1000 or 1024 bytes, the
part's own header lines).

Shortening is decided once per variant, at render time, and only from the content: the
same stories give the same cuts. The levels keep more of the edition first: every story
with summaries cut at a word, then fewer stories per section, and last one story a
section without its summary. A variant that does not fit even so is not sent at all.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.render.links import links
from worker.render.personalise import Recipient, tokens
from worker.render.qp import EncodedBody
from worker.settings import Settings
from worker.tokens import LINK_KEY_CHARS

GMAIL_CLIP_BYTES = 102 * 1024
# What the HTML part as sent may reach: six percent under the clip.
SEND_LIMIT_BYTES = 96 * 1024
# The most bytes one character takes in the part (four of UTF-8, each "=XX") and the
# longest name and address an import accepts (worker/readers/subscribers.py, RFC 5321).
_WIDEST = "\U0001F642"
_LONGEST_NAME = 200
_LONGEST_EMAIL = 254
_LARGEST_ID = 2**63 - 1
# Summaries cut to this many characters, each level in turn, before stories are dropped.
SUMMARY_CUTS = (800, 600, 480, 360, 240)
LAST_SUMMARY_CUT = 100


@dataclass(frozen=True)
class Trim:
    """How much of each section a shortened variant keeps: the first `stories` stories
    (None: all of them), each summary cut to `summary` characters (None: whole)."""

    stories: int | None = None
    summary: int | None = None

    @property
    def is_full(self) -> bool:
        return self.stories is None and self.summary is None


FULL = Trim()


def trims(most_stories: int) -> tuple[Trim, ...]:
    """Every level after FULL, from the least to the most shortened. Each keeps a subset of
    the one before, so the size only falls along it and a bisection finds the first that fits."""
    levels = [Trim(None, cut) for cut in SUMMARY_CUTS]
    levels += [Trim(n, SUMMARY_CUTS[-1]) for n in range(most_stories - 1, 0, -1)]
    return (*levels, Trim(1, LAST_SUMMARY_CUT), Trim(1, 0))


def sent_html_bytes(html: str, *, nonce: str, regions: tuple[str, ...], edition_key: str, variant_key: str,
                    settings: Settings, language: str = "en") -> int:
    """The size of the HTML part of the largest copy of this variant, as sent."""
    urls = links(settings, secret="measure", edition_key=edition_key, variant_key=variant_key,
                 subscriber_id=_LARGEST_ID, link_key="w" * LINK_KEY_CHARS, language=language)
    largest = Recipient(email=_WIDEST * _LONGEST_EMAIL, name=_WIDEST * _LONGEST_NAME,
                        unsubscribe_url=urls.unsubscribe, view_online_url=urls.view_online, manage_url=urls.manage,
                        leave_urls=urls.leave(regions), language=language)
    body = EncodedBody.build(html, tokens=tokens(nonce, regions), escape=True)
    return len(body.render(largest.values()))


def fits(size: int) -> bool:
    return size <= SEND_LIMIT_BYTES
