"""A copy's links: unsubscribe, view online, manage, and each region's leave page."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from worker.settings import Settings
from worker.tokens import ClickTarget, click_token, manage_token, unsubscribe_token


@dataclass(frozen=True)
class Links:
    unsubscribe: str
    view_online: str
    manage: str

    def leave(self, regions: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        """Each region's "Stop <region> news" page: under the manage link, so no more
        signing per copy. Codes are validated ISO codes, safe in a path as they are."""
        return tuple((code, f"{self.manage}/leave/{code}") for code in regions)


def links(settings: Settings, *, secret: str, edition_key: str, variant_key: str,
          subscriber_id: int | None, link_key: str | None = None, language: str | None = None) -> Links:
    """A copy's links. A test send's links unsubscribe and manage nobody (id 0, no key).
    View online names the copy's language when it is not the list's own."""
    ident, key = (subscriber_id, link_key or "") if subscriber_id else (0, "")
    spoken = f"/{language}" if language and language != settings.language else ""
    return Links(
        unsubscribe=f"{settings.public_url}/unsubscribe/{unsubscribe_token(secret, ident, key)}",
        view_online=f"{settings.public_url}/archive/{edition_key}/{variant_key}{spoken}",
        manage=f"{settings.public_url}/manage/{manage_token(secret, ident, key)}",
    )


@dataclass(frozen=True)
class ClickLinks:
    """Story links through our counting redirect (NEWSLETTER_COUNT_CLICKS, worker/clicks.py):
    they name the edition, the story and the section's region, never the reader, so every
    copy of a section carries the same bytes and a section is still inlined once."""

    public_url: str
    secret: str
    edition_id: int

    def url(self, story_id: int, region: str) -> str:
        return f"{self.public_url}/r/{click_token(self.secret, ClickTarget(self.edition_id, story_id, region))}"

    @classmethod
    def of_edition(cls, settings: Settings, edition_id: int) -> ClickLinks | None:
        if not settings.count_clicks:
            return None
        return cls(settings.public_url, settings.require_secret_key(), edition_id)


def one_click_warning(settings: Settings) -> str | None:
    """Why real mail would go out without a working one-click unsubscribe, if it would.
    RFC 8058 requires an https List-Unsubscribe URL for one-click, and Gmail and Yahoo
    require one-click of bulk senders: an http:// NEWSLETTER_PUBLIC_URL still sends, but
    their "Unsubscribe" button is gone and the mail looks less like a list's. A loopback
    host is a machine's own test setup (a local relay such as mailpit), not mail to them."""
    if settings.email_backend == "smtp" and settings.public_url.startswith("http://") \
            and not _loopback(urlsplit(settings.public_url).hostname or ""):
        return ("NEWSLETTER_PUBLIC_URL is http:// with the smtp backend: Gmail and Yahoo ignore a "
                "List-Unsubscribe that is not https (RFC 8058 one-click); set an https:// URL")
    return None


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")
