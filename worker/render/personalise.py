"""Per-subscriber values spliced into a rendered variant, escaped for their place."""

from __future__ import annotations

import html
from dataclasses import dataclass

# Plain ASCII without spaces: premailer leaves these untouched in href attributes
# (it percent-encodes spaces and non-ASCII there) and autoescaping cannot alter them.
TOKENS = {
    "greeting": "%%NL_GREETING%%",
    "email": "%%NL_EMAIL%%",
    "unsubscribe_url": "%%NL_UNSUBSCRIBE_URL%%",
    "view_online_url": "%%NL_VIEW_ONLINE_URL%%",
}


def token_context() -> dict[str, str]:
    """What templates see as `personal`: the tokens themselves."""
    return dict(TOKENS)


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


def fill(template: str, values: dict[str, str], *, escape: bool) -> str:
    out = template
    for key, token in TOKENS.items():
        out = out.replace(token, for_place(values[key], escape=escape))
    return out


def personalise(variant, recipient: Recipient) -> PersonalDigest:
    """The subscriber's copy: HTML-escaped values in the HTML part, raw in the text part."""
    values = recipient.values()
    return PersonalDigest(
        subject=variant.subject,
        html=fill(variant.html, values, escape=True),
        text=fill(variant.text, values, escape=False),
    )
