"""NEWSLETTER_SEND_RATE across every worker: one token bucket in Redis.

Celery's per-task `rate_limit` is per worker process and counts tasks, not
messages; a shared bucket holds the limit however many workers run.
"""

from __future__ import annotations

import time

import redis

# Refill by elapsed time, take one token if there is one; otherwise say how long
# to wait. Redis's own clock (TIME) keeps every worker on the same time base.
_TAKE = """
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', key, 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + (now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', key, 'tokens', tokens, 'at', now)
redis.call('EXPIRE', key, 3600)
return tostring(wait)
"""


class RateLimiter:
    def __init__(self, client: redis.Redis, rate: float, *, key: str = "newsletter:send-rate",
                 burst: float = 1.0) -> None:
        self.client = client
        self.rate = rate
        # A burst of one: the measured rate never exceeds the setting, even per second.
        self.burst = burst
        self.key = key
        self._take = client.register_script(_TAKE)

    def acquire(self) -> None:
        while True:
            wait = float(self._take(keys=[self.key], args=[self.rate, self.burst]))
            if wait <= 0:
                return
            time.sleep(min(wait, 1.0))


def make_throttle(settings):
    """A callable that blocks until the next message may go, or None when unlimited."""
    if settings.send_rate <= 0:
        return None
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=settings.smtp_timeout)
    return RateLimiter(client, settings.send_rate).acquire
