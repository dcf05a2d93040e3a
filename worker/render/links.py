"""A copy's links: unsubscribe, view online, manage, and each region's leave page."""

from __future__ import annotations

from dataclasses import dataclass

from worker.settings import Settings
from worker.tokens import manage_token, unsubscribe_token


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
          subscriber_id: int | None, link_key: str | None = None) -> Links:
    """A copy's links. A test send's links unsubscribe and manage nobody (id 0, no key)."""
    ident, key = (subscriber_id, link_key or "") if subscriber_id else (0, "")
    return Links(
        unsubscribe=f"{settings.public_url}/unsubscribe/{unsubscribe_token(secret, ident, key)}",
        view_online=f"{settings.public_url}/archive/{edition_key}/{variant_key}",
        manage=f"{settings.public_url}/manage/{manage_token(secret, ident, key)}",
    )
