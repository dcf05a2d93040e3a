"""Typed settings: defaults, then a TOML file, then `NEWSLETTER_*` environment.

Nothing is read at import time; call `load_settings()`. Secrets (the SMTP
password and the signing key) come only from the environment and are kept as
`SecretStr`, so they never show up in a repr, a log line or an error.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from datetime import timedelta
from email.headerregistry import Address
from functools import lru_cache
from math import floor
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator

from worker import PROJECT_ROOT
from worker.errors import ConfigError
from worker.origins import origin_of
from worker.text import contains_control
from worker.zones import ZoneError, normalise_zone

ENV_PREFIX = "NEWSLETTER_"
DEFAULT_CONFIG = Path("config/newsletter.toml")
SECRETS = frozenset({"smtp_password", "secret_key", "operator_token", "bounce_mailbox"})
# Variables with the prefix that are not settings (the config path itself, the CLI's
# --debug, the test suite's and the benchmarks' own knobs).
_NOT_SETTINGS = frozenset({"config", "debug"})
_NOT_SETTINGS_PREFIXES = ("test_", "bench_")


_URL_CHARS = re.compile(r"[!-~]+")
# WCAG 2 AA contrast for normal text, against the header's white text.
MIN_CONTRAST = 4.5
_MAILTO = re.compile(r"[A-Za-z0-9.!#$%&'*+/^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_LIST_ID = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+")
# A fully qualified host name: two or more letter-digit-hyphen labels, the last not all digits.
_FQDN = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                   r"(?![0-9]+$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_RATE = re.compile(r"\d+ *(?:/|per) *(?:\d+ *)?(?:second|minute|hour|day|month|year)s?", re.IGNORECASE)
_ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    database_url: str = "sqlite:///var/newsletter.db"
    broker_url: str = "redis://localhost:6379/0"
    email_backend: Literal["smtp", "file", "console"] = "file"
    outbox_dir: Path = Path("var/outbox")
    preview_dir: Path = Path("var/preview")
    templates_dir: Path = PROJECT_ROOT / "templates" / "email"

    smtp_host: str = "localhost"
    smtp_port: int = Field(25, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = "none"
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_timeout: float = Field(30.0, gt=0, le=600)
    # AUTH sends the password; over a connection without TLS only when the operator
    # says so (a relay on the same host), never implicitly.
    smtp_allow_plain_auth: bool = False
    # A relay keeps a connection for a while; a cap bounds the damage of a stuck one.
    smtp_max_per_connection: int = Field(200, ge=1)
    # SMTP conversations in flight per worker process (delivery lanes, threads). Each
    # waits for its relay's replies and its ledger commits while the others work;
    # 64 at most (each also holds a database connection).
    smtp_connections: int = Field(4, ge=1, le=64)
    # The relay keeps every message and delivers none (Mailpit in docker compose, a test
    # server): the worker and `send` then start with sample settings (`newsletter check`).
    smtp_sink: bool = False

    from_address: str = Field("Melange News <digest@localhost>", alias="from")
    public_url: str = "http://127.0.0.1:8000"
    # The news site itself: the masthead links there (no link when unset).
    site_url: str = ""
    # A region's page on the news site, with {region} for its code, for "More from
    # <region>" links, e.g. https://news.example.org/regions/{region}. Unset: no such link.
    region_url: str = ""
    secret_key: SecretStr | None = None
    # Guards the operator side of the web app (preview, status). Unset: loopback clients only.
    operator_token: SecretStr | None = None
    # Feed URLs resolving to loopback, private, link-local or reserved addresses are
    # refused unless this is set (a site whose feed is on its own network).
    fetch_allow_private: bool = False
    timezone: str = "UTC"
    send_rate: float = Field(0.0, ge=0)
    stories_per_region: int = Field(5, ge=1, le=50)
    max_attempts: int = Field(5, ge=1, le=50)

    dkim_selector: str = ""
    dkim_domain: str = ""
    dkim_key_file: str = ""
    # The name EHLO gives: a fully qualified host name or an address literal ([192.0.2.1]).
    # Unset: this host's name when it is fully qualified, else the From address's domain.
    ehlo_name: str = ""

    # Presentation, so templates carry no brand.
    newsletter_name: str = "Melange News Weekly"
    postal_address: str = "Melange News, 1 Example Street, 10115 Berlin, Germany"
    brand_color: str = Field("#b3261e", pattern=r"^#[0-9a-fA-F]{6}$")
    unsubscribe_mailto: str = ""
    list_id: str = ""
    region_names: dict[str, str] = Field(default_factory=dict)
    # The regions sign-up and manage offer ("RU UA DE"); unset: those with stories in the
    # last weeks (worker/web/offered.py). Readers keep the regions they follow either way.
    regions: list[str] = Field(default_factory=list)
    # A region's main zone where the tz tables' choice (worker/zones.py) is not this list's,
    # e.g. {"US": "America/Los_Angeles"}: the send time of readers who gave no zone.
    region_timezones: dict[str, str] = Field(default_factory=dict)

    # premailer, or css-inline (Rust, ~40x faster) for lists with very many region sets.
    css_inliner: Literal["premailer", "css-inline"] = "premailer"

    send_day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = "mon"
    send_time: str = Field("07:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    catch_up_hours: float = Field(24.0, ge=0)
    # First retry after about this long, doubling each attempt (with jitter), up to 6 h.
    retry_base_seconds: float = Field(60.0, gt=0)
    # This many failed transactions in a row pause the edition: the relay, not the
    # subscribers, is the likely problem.
    error_budget: int = Field(20, ge=1)
    # `celery worker` serves its metrics (worker/metrics.py) on this port of 127.0.0.1; 0: off.
    metrics_port: int = Field(9808, ge=0, le=65535)

    # Bounces and complaints heard after the relay accepted a message (docs/bounces.md).
    # The envelope sender becomes bounce_address with each delivery's signed tag
    # (bounces+<tag>@bounce.example.org); unset: the From address, as before.
    bounce_address: str = ""
    # Where those reports arrive, read by the worker's beat and `newsletter bounces
    # process`: imaps://user:password@host[:port]/FOLDER (a secret: it holds a password).
    bounce_mailbox: SecretStr | None = None
    # A local Maildir where bounces arrive (new/ and cur/), read by beat like the IMAP mailbox.
    bounce_maildir: Path | None = None
    # Temporary failures reported for this many editions in a row mark a subscriber bounced.
    bounce_transient_limit: int = Field(5, ge=1, le=100)
    # Amazon SES: the SNS topic whose signed notifications POST /events/ses accepts; unset: off.
    ses_topic_arn: str = Field("", pattern=r"^(arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256})?$")

    # Readers' side of the web app (docs/readers.md). A confirmation link works this long;
    # a sign-up nobody confirmed is deleted after pending_expiry_days.
    confirm_link_hours: int = Field(48, ge=1, le=24 * 14)
    pending_expiry_days: int = Field(7, ge=1, le=365)
    # POST /subscribe, in `limits` notation ("5/minute;20/hour"): per client address (an
    # IPv6 client by its /64) and for all clients together. Counted in Redis, so every web
    # process shares them; ratelimit_url empty means the broker's Redis.
    subscribe_limit_per_ip: str = "5/minute;20/hour"
    subscribe_limit_global: str = "120/minute;2000/hour"
    # Confirmation mails, on top of one an hour per address: per mailbox (the local part
    # without +tag, and without dots at gmail.com) and per domain, so address variants do
    # not add up to a flood in one inbox (docs/readers.md). The domain's counts mailboxes,
    # and spares the large providers (docs/security.md).
    confirm_limit_per_mailbox: str = "3/hour;5/day"
    confirm_limit_per_domain: str = "300/hour"
    ratelimit_url: str = ""
    # Origins besides NEWSLETTER_PUBLIC_URL's and NEWSLETTER_SITE_URL's whose pages may post
    # the sign-up form or call it with fetch(), separated by spaces or commas.
    subscribe_origins: str = ""
    # Reverse proxies in front of the web app: with N, the client address for rate limits is
    # the N-th from the right in X-Forwarded-For. 0: the TCP peer (never the header).
    trusted_proxies: int = Field(0, ge=0, le=5)
    # Feeds polled by the worker (docs/sources.md): [[sources]] tables in the TOML file, each
    # with url (an http(s) URL or a file path) and an optional default region; besides the
    # ones `newsletter sources add` keeps in the database. Each is polled every
    # sources_poll_minutes with conditional GET, and once more just before a weekly edition
    # is planned.
    sources: list[dict[str, str | None]] = Field(default_factory=list)
    sources_poll_minutes: int = Field(30, ge=1, le=24 * 60)
    # A scheduled edition that looks broken is held, not sent (docs/sources.md): no story
    # in the week; a followed region with less than hold_below_ratio of its usual count
    # (the median of its last four weeks, when that is at least hold_min_usual); or no
    # story in the last hold_stale_days days of the week (0: not checked). review=true
    # holds every scheduled edition until `newsletter send --week W --approve`.
    review: bool = False
    hold_below_ratio: float = Field(0.3, ge=0, le=1)
    hold_min_usual: int = Field(4, ge=1)
    hold_stale_days: float = Field(4.0, ge=0)

    # Mechanics, with defaults that hold the guarantee and no decision in them for a user;
    # documented in docs/operations.md, shortened by the fault tests to stay fast. What
    # follows from them is derived once, in the properties below.
    # 200 rows a batch: Celery's ~1 ms per task becomes noise, and a killed worker
    # returns at most this many rows.
    batch_size: int = Field(200, ge=1, le=10_000)
    # How long a batch task may hold its rows; also Celery's hard time limit for it.
    batch_lease_seconds: int = Field(900, ge=5)
    # A row handed to the broker is handed out again if still untouched after this.
    redispatch_seconds: int = Field(600, ge=1)
    # How long a row may sit in `sending` before the reconciler calls it `unknown`.
    send_lease_seconds: int | None = Field(None, ge=1)
    # Redis redelivers an unacknowledged task after this.
    broker_visibility_timeout: int | None = Field(None, ge=1)
    # A worker process that has not renewed its heartbeat for this long is dead: its batch
    # leases end at once and its rows in `sending` become `unknown` (worker/delivery/liveness.py).
    liveness_seconds: int = Field(30, ge=5, le=3600)
    # An edition paused by a run of temporary failures asks the relay again after this long,
    # then twice as long each time, up to 30 minutes (worker/delivery/relay.py).
    relay_probe_seconds: float = Field(60.0, gt=0)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("from_address")
    @classmethod
    def _from(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("public_url", "site_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if value == "":
            return value
        # ASCII without spaces: it goes into List-Unsubscribe as it is (an IDN host in punycode).
        if not value.startswith(("http://", "https://")) or not _URL_CHARS.fullmatch(value):
            raise ValueError("must be an http:// or https:// URL in ASCII (an IDN host in punycode), no spaces")
        return value.rstrip("/")

    @field_validator("brand_color")
    @classmethod
    def _brand_color(cls, value: str) -> str:
        # The header's name and dates are white on this colour: WCAG 2's AA minimum for text.
        ratio = contrast_ratio(value, "#ffffff")
        if ratio < MIN_CONTRAST:
            raise ValueError(f"contrast {floor(ratio * 100) / 100:.2f}:1 with the header's white text, under "
                             f"the {MIN_CONTRAST}:1 WCAG minimum; choose a darker colour")
        return value

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _mailto(cls, value: str) -> str:
        if value and not _MAILTO.fullmatch(value):
            raise ValueError("must be a plain ASCII address such as unsubscribe@example.org")
        return value

    @field_validator("bounce_address")
    @classmethod
    def _bounce_address(cls, value: str) -> str:
        if value and (not _MAILTO.fullmatch(value) or "+" in value.partition("@")[0]):
            raise ValueError("must be a plain address such as bounces@bounce.example.org (no '+': "
                             "the delivery's tag goes after one)")
        return value

    @field_validator("ehlo_name")
    @classmethod
    def _ehlo_name(cls, value: str) -> str:
        if value and not is_ehlo_name(value):
            raise ValueError("must be a fully qualified host name such as mail.example.org, "
                             "or an address literal such as [192.0.2.1]")
        return value

    @field_validator("list_id")
    @classmethod
    def _list_id(cls, value: str) -> str:
        if value and not _LIST_ID.fullmatch(value):
            raise ValueError("must be dot-separated letters, digits, '-' and '_', such as weekly.example.org")
        return value

    @field_validator("region_url")
    @classmethod
    def _region_url(cls, value: str) -> str:
        if value == "":
            return value
        if value.count("{region}") != 1 or "{" in value.replace("{region}", "") or "}" in value.replace(
                "{region}", ""):
            raise ValueError("must contain {region} exactly once, e.g. https://news.example.org/regions/{region}")
        cls._public_url(value.replace("{region}", "RU"))
        return value

    @field_validator("subscribe_limit_per_ip", "subscribe_limit_global", "confirm_limit_per_mailbox",
                     "confirm_limit_per_domain")
    @classmethod
    def _limits(cls, value: str) -> str:
        # The grammar of `limits`' parse_many, checked here without importing it (CLI start-up).
        if not all(_RATE.fullmatch(part.strip()) for part in re.split(r"[;,]", value)):
            raise ValueError('must be rates such as "5/minute;20/hour"')
        return value

    @field_validator("ratelimit_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("subscribe_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in value.replace(",", " ").split():
            if not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin such as https://news.example.org")
        return value

    @field_validator("pending_expiry_days")
    @classmethod
    def _pending_outlives_links(cls, value: int, info: ValidationInfo) -> int:
        hours = info.data.get("confirm_link_hours")
        if hours is not None and value * 24 < hours:
            raise ValueError(f"a sign-up must not expire while its confirmation link works "
                             f"(NEWSLETTER_CONFIRM_LINK_HOURS={hours}): at least {-(-hours // 24)} days")
        return value

    @field_validator("sources", mode="before")
    @classmethod
    def _sources(cls, value: Any) -> Any:
        from worker.regions import RegionError, normalise_region

        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except json.JSONDecodeError:
                raise ValueError('must be a JSON array such as [{"url": "https://…", "region": "RU"}]') from None
        if not isinstance(value, list):
            raise ValueError("must be a list of [[sources]] tables with url and region")
        out = []
        for n, entry in enumerate(value, 1):
            if not isinstance(entry, dict) or set(entry) - {"url", "region"}:
                raise ValueError(f"source {n}: a table with url and an optional region, nothing else")
            url = entry.get("url")
            if not isinstance(url, str) or not url.strip() or contains_control(url):
                raise ValueError(f"source {n}: url must be an http(s) URL or a file path")
            region = entry.get("region")
            if region is not None:
                try:
                    region = normalise_region(str(region))
                except RegionError as exc:
                    raise ValueError(f"source {n}: region: {exc}") from None
            out.append({"url": url.strip(), "region": region})
        return out

    @field_validator("region_names", mode="before")
    @classmethod
    def _region_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise ValueError('must be a JSON object such as {"RU": "Russia"}') from None
        if isinstance(value, dict):
            value = {str(k).upper(): v for k, v in value.items()}
        return value

    @field_validator("regions", mode="before")
    @classmethod
    def _regions(cls, value: Any) -> Any:
        from worker.regions import RegionError, parse_regions  # as in _sources above

        try:
            return parse_regions(value if isinstance(value, str | list) else str(value))
        except RegionError as exc:
            raise ValueError(f"{exc}: region codes such as RU UA DE") from None

    @field_validator("region_timezones", mode="before")
    @classmethod
    def _region_timezones(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise ValueError('must be a JSON object such as {"RU": "Europe/Moscow"}') from None
        if not isinstance(value, dict):
            return value
        from worker.regions import RegionError, normalise_region  # as in _sources above
        out = {}
        for region, zone in value.items():
            try:
                out[normalise_region(str(region))] = normalise_zone(str(zone))
            except (RegionError, ZoneError) as exc:
                raise ValueError(f"{region}: {exc}") from None
        return out

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
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def sender(self) -> Address:
        # Cached by value, not on the instance: model_copy(update=...) must not keep a stale one.
        return _parsed_address(self.from_address)

    @property
    def helo_name(self) -> str:
        """What EHLO says (a strict relay refuses a name that is not fully qualified, and a
        container's host name is a random id)."""
        if self.ehlo_name:
            return self.ehlo_name
        host = socket.gethostname()
        if _FQDN.fullmatch(host):
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


@lru_cache(maxsize=16)
def _parsed_address(value: str) -> Address:
    return parse_address(value)


def _luminance(color: str) -> float:
    """WCAG 2 relative luminance of a #rrggbb colour (sRGB)."""
    channels = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours, 1 to 21."""
    light, dark = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def parse_address(value: str) -> Address:
    """Parse `Name <user@domain>` or `user@domain` into an Address, strictly."""
    from email.headerregistry import HeaderRegistry

    if contains_control(value):
        raise ValueError("must not contain control characters or line breaks")
    header = HeaderRegistry()("From", value)
    if len(header.addresses) != 1 or header.defects:
        raise ValueError(f"must be one address such as 'News <news@example.org>', got {value!r}")
    address = header.addresses[0]
    if not address.username or not address.domain:
        raise ValueError(f"must be one address such as 'News <news@example.org>', got {value!r}")
    # The parser decodes encoded-words: check what it decoded to, which is what gets written.
    if any(contains_control(part) for part in (address.display_name, address.username, address.domain)):
        raise ValueError("must not contain control characters or line breaks, encoded or not")
    return address


def is_ehlo_name(value: str) -> bool:
    """A fully qualified host name, or an address literal of RFC 5321 4.1.3."""
    if _FQDN.fullmatch(value):
        return True
    if not (value.startswith("[") and value.endswith("]")):
        return False
    literal = value[1:-1]
    try:
        if literal[:5].lower() == "ipv6:":
            return ipaddress.ip_address(literal[5:]).version == 6
        return ipaddress.ip_address(literal).version == 4 and literal.count(".") == 3
    except ValueError:
        return False


def env_name(field: str) -> str:
    """The environment variable of a Settings field."""
    return ENV_PREFIX + ("FROM" if field == "from_address" else field.upper())


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key in data:
        if key in SECRETS:
            raise ConfigError(
                f"setting {key} is a secret: set {env_name(key)} in the environment, "
                f"not in {path}"
            )
    return data


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings; raise ConfigError naming the first bad setting."""
    return load_settings_with_sources(env)[0]


def load_settings_with_sources(env: Mapping[str, str] | None = None) -> tuple[Settings, dict[str, str]]:
    """Settings, and where each field's value came from: "default", "file PATH" or the
    environment variable's name (what `newsletter config` shows)."""
    env = os.environ if env is None else env
    # A near miss would leave the setting it meant at its default (a new SQLite database
    # instead of the PostgreSQL one): refused, where a name like no setting is only warned of.
    misspelt = [f"{name} is not a setting: did you mean {close}?" for name, close in unknown_env_vars(env) if close]
    if misspelt:
        raise ConfigError("; ".join(misspelt))
    values, origin, path = _gather(env)
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else "?"
        where = origin.get(loc, loc)
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown setting {loc!r} in {path}") from None
        msg = err["msg"].removeprefix("Value error, ")
        # Never echo a secret back, not even a malformed one.
        shown = "" if loc in SECRETS else f" (got {err.get('input')!r})"
        raise ConfigError(f"setting {_where_name(where)}: {msg}{shown}") from None
    sources = {}
    for field in Settings.model_fields:
        key = _key(field)
        where = origin.get(key)
        sources[field] = ("default" if where is None else where if where.startswith(ENV_PREFIX)
                          else f"file {path.absolute()}")
    return settings, sources


def _key(field: str) -> str:
    """The field's name in the file and, upper-cased after the prefix, in the environment."""
    return "from" if field == "from_address" else field


def _gather(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], Path]:
    explicit = env.get(ENV_PREFIX + "CONFIG")
    path = Path(explicit) if explicit else DEFAULT_CONFIG
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if explicit or path.exists():
        for key, value in _read_config(path).items():
            values[key] = value
            origin[key] = f"{key} in {path}"
    fields = {_key(n) for n in Settings.model_fields}
    for name, value in env.items():
        key = _env_key(name)
        if key is None or key not in fields:
            continue  # not ours, or a variable that shares the prefix (see unknown_env_vars)
        values[key] = value
        origin[key] = name
    return values, origin, path


def _env_key(name: str) -> str | None:
    """`NEWSLETTER_SMTP_PORT` -> `smtp_port`; None for other variables and our non-settings."""
    if not name.startswith(ENV_PREFIX):
        return None
    key = name[len(ENV_PREFIX):].lower()
    if key in _NOT_SETTINGS or key.startswith(_NOT_SETTINGS_PREFIXES):
        return None
    return key


def unknown_env_vars(env: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """`NEWSLETTER_*` variables that name no setting (a typo is otherwise silently ignored),
    each with the closest real name, if one is close."""
    env = os.environ if env is None else env
    fields = {_key(n) for n in Settings.model_fields}
    unknown = []
    for name in sorted(env):
        key = _env_key(name)
        if key is None or key in fields:
            continue
        # Compared without the prefix, which every name shares and would make all look alike.
        close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.75)
        unknown.append((name, ENV_PREFIX + close[0].upper() if close else None))
    return unknown


def _where_name(where: str) -> str:
    return where if where.startswith(ENV_PREFIX) or " in " in where else env_name(where)
