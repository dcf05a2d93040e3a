"""Rate limits on POST /subscribe: per client address and for all clients together; and
on the confirmation mails it sends: per mailbox and per domain (not for the large
providers' domains, LARGE_PROVIDERS).

Counted in Redis with `limits` (moving windows), so every web process (gunicorn
workers, several hosts) shares one count. When Redis cannot be reached the
endpoint refuses (503) rather than sending confirmation mail without a limit.

A confirmation refused by the mailbox or domain limit is counted in Redis too (so the
count is every process's), and the web app's /metrics shows it as
newsletter_confirmations_refused_total {limit}.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

import redis
from flask import Request
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from worker.readers.subscribers import mailbox_of
from worker.settings import Settings

log = logging.getLogger(__name__)

# Keys: LIMITS:LIMITER/newsletter-subscribe/ip/<address>/... and .../all/...
SCOPE = "newsletter-subscribe"
# Mailbox providers that take mail for a large share of all readers: the per-domain limit
# is no protection for them (they take millions of mails an hour; the global sign-up limit
# and the per-mailbox limit bound what we send them), and spending it would let a few
# clients stop every sign-up at gmail.com for an hour. docs/security.md has the trade-off.
LARGE_PROVIDERS = frozenset({
    "gmail.com", "outlook.com", "hotmail.com", "live.com", "msn.com", "yahoo.com", "ymail.com", "icloud.com",
    "me.com", "mac.com", "aol.com", "proton.me", "protonmail.com", "gmx.de", "gmx.net", "web.de", "t-online.de",
    "mail.ru", "yandex.ru", "orange.fr", "free.fr", "qq.com", "163.com", "comcast.net",
})


PER_CLIENT = "NEWSLETTER_SUBSCRIBE_LIMIT_PER_IP"
EVERYONE = "NEWSLETTER_SUBSCRIBE_LIMIT_GLOBAL"


class LimitsUnavailable(Exception):
    """The shared counter store (Redis) did not answer."""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after: int = 0  # seconds, when refused
    # The setting whose budget is spent, when refused (the client's own, else everyone's).
    setting: str = ""


class MailLimit(StrEnum):
    """Which limit held a confirmation mail back."""

    MAILBOX = "mailbox"
    DOMAIN = "domain"


class SubscribeLimiter:
    def __init__(self, settings: Settings) -> None:
        self._url = settings.ratelimit_storage_url
        self._per_ip = parse_many(settings.subscribe_limit_per_ip)
        self._everyone = parse_many(settings.subscribe_limit_global)
        self._per_mailbox = parse_many(settings.confirm_limit_per_mailbox)
        self._per_domain = parse_many(settings.confirm_limit_per_domain)
        self._limiter: MovingWindowRateLimiter | None = None
        self._counts: redis.Redis | None = None
        self._lock = threading.Lock()

    def _strategy(self) -> MovingWindowRateLimiter:
        # Made on first use, in the process that serves (after gunicorn's fork).
        with self._lock:
            if self._limiter is None:
                storage = RedisStorage(self._url, socket_timeout=2, socket_connect_timeout=2)
                self._limiter = MovingWindowRateLimiter(storage)
            return self._limiter

    def _redis(self) -> redis.Redis:
        with self._lock:
            if self._counts is None:
                self._counts = redis.Redis.from_url(self._url, socket_timeout=2, socket_connect_timeout=2)
            return self._counts

    def mail_refused(self, email_key: str) -> MailLimit | None:
        """Count one confirmation mail to this address's mailbox and domain; the limit that
        refuses it (and the refusal counted), or None to send it."""
        mailbox, domain = mailbox_of(email_key)
        per_domain = () if domain in LARGE_PROVIDERS else self._per_domain
        try:
            limiter = self._strategy()
            refused = next((MailLimit.MAILBOX for item in self._per_mailbox
                            if not limiter.hit(item, SCOPE, "mailbox", mailbox)), None)
            # A domain's limit counts its mailboxes, each once a window: one reader asking
            # again (within the mailbox's own limit) spends none of their neighbours' share.
            window = max((item.get_expiry() for item in per_domain), default=0)
            if refused is None and window and self._redis().set(f"{SCOPE}/seen/{domain}/{mailbox}", 1, nx=True,
                                                                ex=window):
                refused = next((MailLimit.DOMAIN for item in per_domain
                                if not limiter.hit(item, SCOPE, "domain", domain)), None)
            if refused is not None:
                self._redis().incr(f"{SCOPE}/refused/{refused}")
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None
        if refused is MailLimit.DOMAIN:
            # Not silent: a domain's sign-ups are held back, which its readers cannot see.
            log.warning("confirmation mail to a reader at %s held back: the domain's limit "
                        "(NEWSLETTER_CONFIRM_LIMIT_PER_DOMAIN) is spent", domain)
        return refused

    def refused_counts(self) -> dict[MailLimit, int]:
        """Confirmation mails refused so far, by limit, over every process."""
        try:
            values = self._redis().mget([f"{SCOPE}/refused/{which}" for which in MailLimit])
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None
        return {which: int(value or 0) for which, value in zip(MailLimit, values, strict=True)}

    def hit(self, client: str) -> Verdict:
        """Count one request; refused when the client's or everyone's budget is spent.
        Refused requests count too: a client that keeps trying stays limited."""
        checks: list[tuple[RateLimitItem, tuple[str, ...]]] = [
            *((item, (SCOPE, "ip", client)) for item in self._per_ip),
            *((item, (SCOPE, "all")) for item in self._everyone),
        ]
        try:
            limiter = self._strategy()
            refused = [(item, ids) for item, ids in checks if not limiter.hit(item, *ids)]
            if not refused:
                return Verdict(True)
            resets = [limiter.get_window_stats(item, *ids).reset_time for item, ids in refused]
        except RedisError as exc:
            raise LimitsUnavailable(str(exc)) from None
        setting = PER_CLIENT if any(ids[1] == "ip" for _item, ids in refused) else EVERYONE
        return Verdict(False, max(1, math.ceil(max(resets) - time.time())), setting)


def client_address(request: Request, trusted_proxies: int) -> str:
    """Who is asking, for the per-client limit: the TCP peer, or with N trusted proxies
    the N-th address from the right of X-Forwarded-For (the one the outermost of our
    proxies saw; anything left of it the client wrote itself). An IPv6 client counts by
    its /64, which one host usually has whole."""
    raw = request.remote_addr or ""
    if trusted_proxies:
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
        if len(hops) >= trusted_proxies:
            raw = hops[-trusted_proxies]
    try:
        address = ipaddress.ip_address(raw)
    except ValueError:
        return raw[:64] or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class RefusedConfirmations(Collector):
    """newsletter_confirmations_refused_total {limit}, read from Redis at each scrape;
    newsletter_ratelimit_up 0 when Redis could not be read."""

    def __init__(self, limiter: SubscribeLimiter) -> None:
        self._limiter = limiter

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("newsletter_ratelimit_up", "1 if the rate-limit counters could be read.")
        try:
            counts = self._limiter.refused_counts()
        except LimitsUnavailable:
            up.add_metric([], 0)
            yield up
            return
        refused = CounterMetricFamily("newsletter_confirmations_refused",
                                      "Confirmation mails not sent: the mailbox's or domain's limit was spent.",
                                      labels=["limit"])
        for which, count in counts.items():
            refused.add_metric([which.value], count)
        up.add_metric([], 1)
        yield refused
        yield up
