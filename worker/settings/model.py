"""`Settings`: every topic's fields as one flat, frozen model, and what is derived from them."""

from __future__ import annotations

import socket
from datetime import timedelta
from email.headerregistry import Address
from zoneinfo import ZoneInfo

from worker.errors import ConfigError
from worker.origins import origin_of
from worker.settings.topics import Bounces, Delivery, Kind, Mail, Newsletter, Regions, Schedule, Store, Topic, Web
from worker.settings.values import FQDN, parsed_address

# The order `newsletter config` shows them in, and the order of Settings.model_fields.
TOPICS: tuple[type[Topic], ...] = (Store, Mail, Newsletter, Regions, Schedule, Web, Bounces, Delivery)


# Pydantic lists inherited fields from the last base to the first: the bases are TOPICS
# reversed, so that model_fields reads in topic order too.
class Settings(Delivery, Bounces, Web, Schedule, Regions, Newsletter, Mail, Store):
    @property
    def batch_lease(self) -> timedelta:
        return timedelta(seconds=self.batch_lease_seconds)

    @property
    def send_lease(self) -> timedelta:
        """One SMTP transaction at its slowest: connect, greeting, EHLO, STARTTLS, AUTH,
        MAIL, RCPT, DATA, content and reply, each allowed NEWSLETTER_SMTP_TIMEOUT."""
        return timedelta(seconds=self.send_lease_seconds or self.smtp_timeout * 10 + 30)

    @property
    def redispatch_after(self) -> timedelta:
        return timedelta(seconds=self.redispatch_seconds)

    @property
    def visibility_timeout(self) -> int:
        """Seconds: every task finishes (or its hard limit kills it) well before Redis
        hands its message to another worker."""
        return self.broker_visibility_timeout or self.batch_lease_seconds * 2 + 60

    @property
    def liveness_timeout(self) -> timedelta:
        return timedelta(seconds=self.liveness_seconds)

    @property
    def ratelimit_storage_url(self) -> str:
        return self.ratelimit_url or self.broker_url

    @property
    def reader_origins(self) -> frozenset[str]:
        """Origins whose pages may post the sign-up form: ours, the news site's, and the configured ones."""
        found = {origin_of(url) for url in (self.public_url, self.site_url) if url}
        return frozenset(found | set(self.subscribe_origins.replace(",", " ").split()))

    @property
    def wider(self) -> bool:
        """A quiet week's readers get the site's most opened stories (NEWSLETTER_QUIET_WEEK=wider)."""
        return self.quiet_week == "wider"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def sender(self) -> Address:
        # Cached by value, not on the instance: model_copy(update=...) must not keep a stale one.
        return parsed_address(self.from_address)

    @property
    def helo_name(self) -> str:
        """What EHLO says (a strict relay refuses a name that is not fully qualified, and a
        container's host name is a random id)."""
        if self.ehlo_name:
            return self.ehlo_name
        host = socket.gethostname()
        if FQDN.fullmatch(host):
            return host
        try:
            return self.sender.domain.encode("idna").decode("ascii")
        except UnicodeError:
            return self.sender.domain if self.sender.domain.isascii() else "localhost"

    @property
    def effective_list_id(self) -> str:
        return self.list_id or f"weekly.{self.sender.domain}"

    def require_secret_key(self) -> str:
        secret = self.optional_secret_key()
        if not secret:
            raise ConfigError(
                "setting NEWSLETTER_SECRET_KEY is required to sign unsubscribe links "
                "and Message-IDs: set it in the environment"
            )
        return secret

    def optional_secret_key(self) -> str:
        """NEWSLETTER_SECRET_KEY, or "" when unset: for a page or check that says itself
        what it cannot do without one (an empty key signs and opens nothing)."""
        return self.secret_key.get_secret_value() if self.secret_key else ""


def kind_of(field: str) -> Kind:
    """Who the setting is for: every operator, an opt-in feature, or tuning (topics.py)."""
    return Kind(Settings.model_fields[field].json_schema_extra["kind"])


def topic_fields() -> list[tuple[str, list[str]]]:
    """Each topic's title and its fields, in the order `newsletter config` shows them."""
    return [(topic.title, list(topic.model_fields)) for topic in TOPICS]
