"""The settings, one class per topic, each field marked with its kind.

`Settings` (model.py) inherits every topic, so a value stays a flat attribute
(`settings.smtp_host`). The kind says who a setting is for, and so where it is shown:

- `decided(...)`: what every operator decides (where the mail goes, who sends it, when);
  `newsletter config` always shows it, the README documents it.
- `feature(...)`: an opt-in feature, off at its default; shown once it is set.
- `tuning(...)`: a default that holds the guarantees and needs no decision; shown once it
  is set, otherwise only by `newsletter config --all`, documented in docs/operations.md.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from math import floor
from pathlib import Path
from typing import Any, ClassVar, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from worker import PROJECT_ROOT
from worker.settings.values import (
    LIST_ID,
    MAILTO,
    MIN_CONTRAST,
    ORIGIN,
    RATE,
    URL_CHARS,
    contrast_ratio,
    is_ehlo_name,
    parse_address,
)
from worker.text import contains_control
from worker.zones import ZoneError, normalise_zone


def _name_key(key: str) -> str:
    language, _, code = key.rpartition(":")
    return f"{language.strip().lower()}:{code.strip().upper()}" if language else code.strip().upper()


class Kind(StrEnum):
    OPERATOR = "operator"
    FEATURE = "feature"
    TUNING = "tuning"


def decided(default: Any = ..., **field: Any) -> Any:
    return Field(default, json_schema_extra={"kind": Kind.OPERATOR.value}, **field)


def feature(default: Any = ..., **field: Any) -> Any:
    return Field(default, json_schema_extra={"kind": Kind.FEATURE.value}, **field)


def tuning(default: Any = ..., **field: Any) -> Any:
    return Field(default, json_schema_extra={"kind": Kind.TUNING.value}, **field)


class Topic(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    title: ClassVar[str]


class Store(Topic):
    title = "Database and broker"

    database_url: str = decided("sqlite:///var/newsletter.db")
    broker_url: str = decided("redis://localhost:6379/0")


class Mail(Topic):
    title = "Sending mail"

    email_backend: Literal["smtp", "file", "console"] = decided("file")
    outbox_dir: Path = decided(Path("var/outbox"))
    smtp_host: str = decided("localhost")
    smtp_port: int = decided(25, ge=1, le=65535)
    smtp_security: Literal["none", "starttls", "tls"] = decided("none")
    smtp_username: str = decided("")
    smtp_password: SecretStr = decided(SecretStr(""))

    # The relay keeps every message and delivers none (Mailpit in docker compose, a test
    # server): the worker and `send` then start with sample settings (`newsletter check`).
    smtp_sink: bool = feature(False)
    # AUTH sends the password; over a connection without TLS only when the operator
    # says so (a relay on the same host), never implicitly.
    smtp_allow_plain_auth: bool = feature(False)
    # The name EHLO gives: a fully qualified host name or an address literal ([192.0.2.1]).
    # Unset: this host's name when it is fully qualified, else the From address's domain.
    ehlo_name: str = feature("")
    # DKIM signing, when all three are set.
    dkim_selector: str = feature("")
    dkim_domain: str = feature("")
    dkim_key_file: str = feature("")

    smtp_timeout: float = tuning(30.0, gt=0, le=600)
    # SMTP conversations in flight per worker process (delivery lanes, threads), each
    # waiting for its relay's replies while the others work. `auto`: as many as the
    # relay's distance needs (worker/delivery/lanes.py); a number: that many, always.
    smtp_connections: int | Literal["auto"] = tuning("auto")
    # A relay keeps a connection for a while; a cap bounds the damage of a stuck one.
    smtp_max_per_connection: int = tuning(200, ge=1)
    # Messages per second across all workers; 0: unlimited.
    send_rate: float = tuning(0.0, ge=0)

    @field_validator("smtp_connections", mode="before")
    @classmethod
    def _smtp_connections(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError("must be auto or a whole number from 1 to 64") from None
        if not 1 <= number <= 64:
            raise ValueError("must be auto or a whole number from 1 to 64")
        return number

    @field_validator("ehlo_name")
    @classmethod
    def _ehlo_name(cls, value: str) -> str:
        if value and not is_ehlo_name(value):
            raise ValueError("must be a fully qualified host name such as mail.example.org, "
                             "or an address literal such as [192.0.2.1]")
        return value


class Newsletter(Topic):
    title = "The newsletter and its links"

    from_address: str = decided("Melange News <digest@localhost>", alias="from")
    # Presentation, so templates carry no brand.
    newsletter_name: str = decided("Melange News Weekly")
    postal_address: str = decided("Melange News, 1 Example Street, 10115 Berlin, Germany")
    brand_color: str = decided("#b3261e", pattern=r"^#[0-9a-fA-F]{6}$")
    public_url: str = decided("http://127.0.0.1:8000")
    # Signs unsubscribe links and Message-IDs.
    secret_key: SecretStr | None = decided(None)
    # The language of a reader who gave none (a sign-up's browser says first): one of the
    # catalogs shipped (worker/i18n.py).
    language: str = decided("en")

    # The news site itself: the masthead links there (no link when unset).
    site_url: str = feature("")
    # A region's page on the news site, with {region} for its code, for "More from
    # <region>" links, e.g. https://news.example.org/regions/{region}. Unset: no such link.
    region_url: str = feature("")
    unsubscribe_mailto: str = feature("")
    list_id: str = feature("")
    # Story links go through our /r/ redirect, which counts opens per story, region and
    # edition: never per reader (worker/clicks). Off: links go straight to the story.
    count_clicks: bool = feature(False)
    # A reader whose regions had no story this week: `skip` sends nothing (no-stories);
    # `wider` sends a short digest of the week's most opened stories across the site.
    quiet_week: Literal["skip", "wider"] = feature("skip")

    templates_dir: Path = tuning(PROJECT_ROOT / "templates" / "email")
    preview_dir: Path = tuning(Path("var/preview"))
    # premailer, or css-inline (Rust, ~40x faster) for lists with very many region sets.
    css_inliner: Literal["premailer", "css-inline"] = tuning("premailer")

    @field_validator("from_address")
    @classmethod
    def _from(cls, value: str) -> str:
        parse_address(value)
        return value

    @field_validator("brand_color")
    @classmethod
    def _brand_color(cls, value: str) -> str:
        # The header's name and dates are white on this colour: WCAG 2's AA minimum for text.
        ratio = contrast_ratio(value, "#ffffff")
        if ratio < MIN_CONTRAST:
            raise ValueError(f"contrast {floor(ratio * 100) / 100:.2f}:1 with the header's white text, under "
                             f"the {MIN_CONTRAST}:1 WCAG minimum; choose a darker colour")
        return value

    @field_validator("public_url", "site_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if value == "":
            return value
        # ASCII without spaces: it goes into List-Unsubscribe as it is (an IDN host in punycode).
        if not value.startswith(("http://", "https://")) or not URL_CHARS.fullmatch(value):
            raise ValueError("must be an http:// or https:// URL in ASCII (an IDN host in punycode), no spaces")
        return value.rstrip("/")

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

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _mailto(cls, value: str) -> str:
        if value and not MAILTO.fullmatch(value):
            raise ValueError("must be a plain ASCII address such as unsubscribe@example.org")
        return value

    @field_validator("list_id")
    @classmethod
    def _list_id(cls, value: str) -> str:
        if value and not LIST_ID.fullmatch(value):
            raise ValueError("must be dot-separated letters, digits, '-' and '_', such as weekly.example.org")
        return value


    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        from worker.i18n import LanguageError, language_of

        try:
            return language_of(value)
        except LanguageError as exc:
            raise ValueError(str(exc)) from None

class Regions(Topic):
    title = "Regions and stories"

    # The regions sign-up and manage offer ("RU UA DE"); unset: those with stories in the
    # last weeks (worker/web/offered.py). Readers keep the regions they follow either way.
    regions: list[str] = decided(default_factory=list)
    stories_per_region: int = decided(5, ge=1, le=50)

    region_names: dict[str, str] = feature(default_factory=dict)
    # A region's main zone where the tz tables' choice (worker/zones.py) is not this list's,
    # e.g. {"US": "America/Los_Angeles"}: the send time of readers who gave no zone.
    region_timezones: dict[str, str] = feature(default_factory=dict)
    # Feeds polled by the worker (docs/sources.md): [[sources]] tables in the TOML file, each
    # with url (an http(s) URL or a file path) and an optional default region; besides the
    # ones `newsletter sources add` keeps in the database. Each is polled every
    # sources_poll_minutes with conditional GET, and once more just before a weekly edition
    # is planned.
    sources: list[dict[str, str | None]] = feature(default_factory=list)
    # Feed URLs resolving to loopback, private, link-local or reserved addresses are
    # refused unless this is set (a site whose feed is on its own network).
    fetch_allow_private: bool = feature(False)

    sources_poll_minutes: int = tuning(30, ge=1, le=24 * 60)

    # The validators below import worker.regions when a region setting is given, not at the
    # top: it loads pycountry (about 0.1 s), which most commands never need.

    @field_validator("regions", mode="before")
    @classmethod
    def _regions(cls, value: Any) -> Any:
        from worker.regions import RegionError, parse_regions

        try:
            return parse_regions(value if isinstance(value, str | list) else str(value))
        except RegionError as exc:
            raise ValueError(f"{exc}: region codes such as RU UA DE") from None

    @field_validator("region_names", mode="before")
    @classmethod
    def _region_names(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise ValueError('must be a JSON object such as {"RU": "Russia"}') from None
        if isinstance(value, dict):
            # "RU" names a region for every reader of English; "ru:RU" for readers of Russian.
            value = {_name_key(str(k)): v for k, v in value.items()}
        return value

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
        from worker.regions import RegionError, normalise_region

        out = {}
        for region, zone in value.items():
            try:
                out[normalise_region(str(region))] = normalise_zone(str(zone))
            except (RegionError, ZoneError) as exc:
                raise ValueError(f"{region}: {exc}") from None
        return out

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


class Schedule(Topic):
    title = "Schedule and review"

    # IANA zone for weeks and the schedule.
    timezone: str = decided("UTC")
    send_day: Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"] = decided("mon")
    send_time: str = decided("07:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")

    # A scheduled edition that looks broken is held, not sent (docs/sources.md): no story
    # in the week; a followed region with less than hold_below_ratio of its usual count
    # (the median of its last four weeks, when that is at least hold_min_usual); or no
    # story in the last hold_stale_days days of the week (0: not checked). review=true
    # holds every scheduled edition until `newsletter send --week W --approve`.
    review: bool = feature(False)

    catch_up_hours: float = tuning(24.0, ge=0)
    hold_below_ratio: float = tuning(0.3, ge=0, le=1)
    hold_min_usual: int = tuning(4, ge=1)
    hold_stale_days: float = tuning(4.0, ge=0)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class Web(Topic):
    title = "Web app and sign-up"

    # Guards the operator side of the web app (preview, status). Unset: loopback clients only.
    operator_token: SecretStr | None = decided(None)

    # Origins besides NEWSLETTER_PUBLIC_URL's and NEWSLETTER_SITE_URL's whose pages may post
    # the sign-up form or call it with fetch(), separated by spaces or commas.
    subscribe_origins: str = feature("")
    # Reverse proxies in front of the web app: with N, the client address for rate limits is
    # the N-th from the right in X-Forwarded-For. 0: the TCP peer (never the header).
    trusted_proxies: int = feature(0, ge=0, le=5)

    # Readers' side of the web app (docs/readers.md). A confirmation link works this long;
    # a sign-up nobody confirmed is deleted after pending_expiry_days.
    confirm_link_hours: int = tuning(48, ge=1, le=24 * 14)
    pending_expiry_days: int = tuning(7, ge=1, le=365)
    # POST /subscribe, in `limits` notation ("5/minute;20/hour"): per client address (an
    # IPv6 client by its /64) and for all clients together. Counted in Redis, so every web
    # process shares them; ratelimit_url empty means the broker's Redis.
    subscribe_limit_per_ip: str = tuning("5/minute;20/hour")
    subscribe_limit_global: str = tuning("120/minute;2000/hour")
    # Confirmation mails, on top of one an hour per address: per mailbox (the local part
    # without +tag, and without dots at gmail.com) and per domain, so address variants do
    # not add up to a flood in one inbox (docs/readers.md). The domain's counts mailboxes,
    # and spares the large providers (docs/security.md).
    confirm_limit_per_mailbox: str = tuning("3/hour;5/day")
    confirm_limit_per_domain: str = tuning("300/hour")
    ratelimit_url: str = tuning("")

    @field_validator("subscribe_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in value.replace(",", " ").split():
            if not ORIGIN.fullmatch(origin):
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

    @field_validator("subscribe_limit_per_ip", "subscribe_limit_global", "confirm_limit_per_mailbox",
                     "confirm_limit_per_domain")
    @classmethod
    def _limits(cls, value: str) -> str:
        # The grammar of `limits`' parse_many, checked here without importing it (CLI start-up).
        if not all(RATE.fullmatch(part.strip()) for part in re.split(r"[;,]", value)):
            raise ValueError('must be rates such as "5/minute;20/hour"')
        return value

    @field_validator("ratelimit_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


class Bounces(Topic):
    title = "Bounces and complaints"

    # Bounces and complaints heard after the relay accepted a message (docs/bounces.md).
    # The envelope sender becomes bounce_address with each delivery's signed tag
    # (bounces+<tag>@bounce.example.org); unset: the From address, as before.
    bounce_address: str = feature("")
    # Where those reports arrive, read by the worker's beat and `newsletter bounces
    # process`: imaps://user:password@host[:port]/FOLDER (a secret: it holds a password).
    bounce_mailbox: SecretStr | None = feature(None)
    # A local Maildir where bounces arrive (new/ and cur/), read by beat like the IMAP mailbox.
    bounce_maildir: Path | None = feature(None)
    # Amazon SES: the SNS topic whose signed notifications POST /events/ses accepts; unset: off.
    ses_topic_arn: str = feature("", pattern=r"^(arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256})?$")

    # Temporary failures reported for this many editions in a row mark a subscriber bounced.
    bounce_transient_limit: int = tuning(5, ge=1, le=100)

    @field_validator("bounce_address")
    @classmethod
    def _bounce_address(cls, value: str) -> str:
        if value and (not MAILTO.fullmatch(value) or "+" in value.partition("@")[0]):
            raise ValueError("must be a plain address such as bounces@bounce.example.org (no '+': "
                             "the delivery's tag goes after one)")
        return value


class Delivery(Topic):
    """Mechanics, with defaults that hold the guarantee and no decision in them for a user;
    documented in docs/operations.md, shortened by the fault tests to stay fast. What
    follows from them is derived once, in Settings' properties."""

    title = "Delivery mechanics"

    # Attempts per delivery before it ends `failed`.
    max_attempts: int = tuning(5, ge=1, le=50)
    # First retry after about this long, doubling each attempt (with jitter), up to 6 h.
    retry_base_seconds: float = tuning(60.0, gt=0)
    # This many failed transactions in a row pause the edition: the relay, not the
    # subscribers, is the likely problem.
    error_budget: int = tuning(20, ge=1)
    # An edition paused by a run of temporary failures asks the relay again after this long,
    # then twice as long each time, up to 30 minutes (worker/delivery/relay.py).
    relay_probe_seconds: float = tuning(60.0, gt=0)
    # 200 rows a batch: Celery's ~1 ms per task becomes noise, and a killed worker
    # returns at most this many rows.
    batch_size: int = tuning(200, ge=1, le=10_000)
    # How long a batch task may hold its rows; also Celery's hard time limit for it.
    batch_lease_seconds: int = tuning(900, ge=5)
    # A row handed to the broker is handed out again if still untouched after this.
    redispatch_seconds: int = tuning(600, ge=1)
    # How long a row may sit in `sending` before the reconciler calls it `unknown`.
    send_lease_seconds: int | None = tuning(None, ge=1)
    # Redis redelivers an unacknowledged task after this.
    broker_visibility_timeout: int | None = tuning(None, ge=1)
    # A worker process that has not renewed its heartbeat for this long is dead: its batch
    # leases end at once and its rows in `sending` become `unknown` (worker/delivery/liveness.py).
    liveness_seconds: int = tuning(30, ge=5, le=3600)
    # `celery worker` serves its metrics (worker/metrics.py) on this port of 127.0.0.1; 0: off.
    metrics_port: int = tuning(9808, ge=0, le=65535)
