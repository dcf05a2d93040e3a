"""Per-subscriber values spliced into a rendered variant, escaped for their place.

A variant is rendered once with a marker in each place a personal value goes,
and every copy fills the markers in. The variant's text also holds feed
content, so a marker must be something content cannot contain: each render
draws a random nonce and the markers carry it. A story that spells out a marker
(a feed author who hopes to collect each reader's address or unsubscribe link
through an image URL) can only guess it.
"""

from __future__ import annotations

import html
import re
import secrets
from dataclasses import dataclass

KEYS = ("greeting", "email", "unsubscribe_url", "view_online_url")


def new_nonce() -> str:
    return secrets.token_hex(8)


def tokens(nonce: str) -> dict[str, str]:
    """The markers of one render. Plain ASCII without spaces: premailer leaves them
    untouched in href attributes (it percent-encodes spaces and non-ASCII there) and
    autoescaping cannot alter them. An empty nonce gives the fixed markers of
    variants stored before markers had one."""
    return {key: f"%%NL{nonce}_{key.upper()}%%" for key in KEYS}


@dataclass(frozen=True)
class Recipient:
    email: str
    name: str | None
    unsubscribe_url: str
    view_online_url: str

    @property
    def greeting(self) -> str:
        return f"Hello {self.name}," if self.name else "Hello,"

    def values(self) -> dict[str, str]:
        return {
            "greeting": self.greeting,
            "email": self.email,
            "unsubscribe_url": self.unsubscribe_url,
            "view_online_url": self.view_online_url,
        }


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
    # One pass: a value that happens to contain a marker is never filled in turn.
    key_of = {token: key for key, token in tokens(nonce).items()}
    return re.sub("|".join(map(re.escape, key_of)), lambda m: for_place(values[key_of[m[0]]], escape=escape),
                  template)


def personalise(variant, recipient: Recipient) -> PersonalDigest:
    """The subscriber's copy: HTML-escaped values in the HTML part, raw in the text part."""
    values = recipient.values()
    return PersonalDigest(
        subject=variant.subject,
        html=fill(variant.html, values, nonce=variant.nonce, escape=True),
        text=fill(variant.text, values, nonce=variant.nonce, escape=False),
    )
