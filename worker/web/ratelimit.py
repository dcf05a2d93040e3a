"""Rate limits on POST /subscribe: per client address and for all clients together.

Counted in Redis with `limits` (moving windows), so every web process (gunicorn
workers, several hosts) shares one count. When Redis cannot be reached the
endpoint refuses (503) rather than sending confirmation mail without a limit.
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from dataclasses import dataclass

from flask import Request
from limits import RateLimitItem, parse_many
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis.exceptions import RedisError

from worker.settings import Settings

# Keys: LIMITS:LIMITER/newsletter-subscribe/ip/<address>/... and .../all/...
SCOPE = "newsletter-subscribe"


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


class SubscribeLimiter:
    def __init__(self, settings: Settings) -> None:
        self._url = settings.ratelimit_storage_url
        self._per_ip = parse_many(settings.subscribe_limit_per_ip)
        self._everyone = parse_many(settings.subscribe_limit_global)
        self._limiter: MovingWindowRateLimiter | None = None
        self._lock = threading.Lock()

    def _strategy(self) -> MovingWindowRateLimiter:
        # Made on first use, in the process that serves (after gunicorn's fork).
        with self._lock:
            if self._limiter is None:
                storage = RedisStorage(self._url, socket_timeout=2, socket_connect_timeout=2)
                self._limiter = MovingWindowRateLimiter(storage)
            return self._limiter

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
