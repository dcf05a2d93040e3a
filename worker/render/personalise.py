"""Per-subscriber values spliced into a rendered variant, escaped for their place.

A variant is rendered once with a marker in each place a personal value goes,
and every copy fills the markers in. The variant's text also holds feed
content, so a marker must be something content cannot contain: each render
draws a random nonce and the markers carry it. A story that spells out a marker
(a feed author who hopes to collect each reader's address or unsubscribe link
through an image URL) can only guess it.

The personal values: the greeting, the address, the unsubscribe, view-online and
manage links, and per region of the variant its "Stop <region> news" link.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

KEYS = ("greeting", "email", "unsubscribe_url", "view_online_url", "manage_url")
# One more marker per region of the variant: its section's "Stop <region> news" link.
LEAVE_PREFIX = "leave_"
# Anything shaped like a marker of any render. Precompiled once: a pattern of one render's
# own markers would be compiled anew for every variant (its nonce is new), which cost more
# than the rest of building the variant's skeleton. Whether a match is one of this
# render's markers is a dictionary lookup.
MARKER = re.compile(r"%%NL[0-9a-f]*_[A-Z0-9_]+%%")


def new_nonce() -> str:
    return secrets.token_hex(8)


def leave_key(region: str) -> str:
    """The marker key of a region's leave link ('leave_RU'); codes are validated ISO codes."""
    return LEAVE_PREFIX + region


def tokens(nonce: str, regions: Iterable[str] = ()) -> dict[str, str]:
    """The markers of one render: the fixed keys, and a leave link per region of the
    variant. Plain ASCII without spaces: premailer leaves them untouched in href
    attributes (it percent-encodes spaces and non-ASCII there) and autoescaping cannot
    alter them. An empty nonce gives the fixed markers of variants stored before
    markers had one."""
    return markers(nonce, (*KEYS, *map(leave_key, regions)))


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    unsubscribe_url: str
    view_online_url: str
    manage_url: str
    # (region code, its leave link) for every region of the variant.
    leave_urls: tuple[tuple[str, str], ...] = ()
    # The variant's language: the greeting's.
    language: str = "en"

    @property
    def greeting(self) -> str:
        from worker.i18n import gettext_for

        _ = gettext_for(self.language)
        return _("Hello %(name)s,") % {"name": self.name} if self.name else _("Hello,")

    def values(self) -> dict[str, str]:
        values = {
            "greeting": self.greeting,
            "email": self.email,
            "unsubscribe_url": self.unsubscribe_url,
            "view_online_url": self.view_online_url,
            "manage_url": self.manage_url,
        }
        for region, url in self.leave_urls:
            values[leave_key(region)] = url
        return values


@dataclass(frozen=True)
class PersonalDigest:
    subject: str
    html: str
    text: str


def for_place(value: str, *, escape: bool) -> str:
    """A personal value as it goes into HTML (escaped) or text (as is).

    quote=True escapes both quote kinds: premailer may re-quote attributes with '.
    """
    return html.escape(value, quote=True) if escape else value


def fill(template: str, values: dict[str, str], *, nonce: str, escape: bool) -> str:
    """Every marker of `values`' keys replaced by its value. One pass: a value that
    happens to contain a marker is never filled in turn."""
    key_of = {token: key for key, token in markers(nonce, tuple(values)).items()}

    def value(match: re.Match[str]) -> str:
        key = key_of.get(match[0])
        return match[0] if key is None else for_place(values[key], escape=escape)

    return MARKER.sub(value, template)


def markers(nonce: str, keys: tuple[str, ...]) -> dict[str, str]:
    """The markers of `keys` for one render (see `tokens`)."""
    return {key: f"%%NL{nonce}_{key.upper()}%%" for key in keys}


def personalise(variant, recipient: Recipient) -> PersonalDigest:
    """The subscriber's copy: HTML-escaped values in the HTML part, raw in the text part."""
    values = recipient.values()
    return PersonalDigest(
        subject=variant.subject,
        html=fill(variant.html, values, nonce=variant.nonce, escape=True),
        text=fill(variant.text, values, nonce=variant.nonce, escape=False),
    )
