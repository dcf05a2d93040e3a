"""NEWSLETTER_SEND_RATE across every worker: one token bucket in Redis.

Celery's per-task `rate_limit` is per worker process and counts tasks, not
messages; a shared bucket holds the limit however many workers run.
"""

from __future__ import annotations

import time

import redis

from worker.delivery.outcome import enhanced_code

# Refill by elapsed time, take one token if there is one; otherwise say how long
# to wait. Redis's own clock (TIME) keeps every worker on the same time base.
_TAKE = """
local key = KEYS[1]
local configured = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', key, 'tokens', 'at', 'rate')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
local rate = math.min(tonumber(state[3]) or configured, configured)
tokens = math.min(burst, tokens + (now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', key, 'tokens', tokens, 'at', now, 'rate', rate)
redis.call('EXPIRE', key, 3600)
return tostring(wait)
"""

# The relay said "slow down": halve the shared rate (not below a floor); every
# accepted message wins back a little (AIMD, as TCP does with congestion).
_ADJUST = """
local key = KEYS[1]
local configured = tonumber(ARGV[1])
local factor = tonumber(ARGV[2])
local step = tonumber(ARGV[3])
local floor = tonumber(ARGV[4])
local rate = tonumber(redis.call('HGET', key, 'rate')) or configured
rate = math.max(floor, math.min(configured, rate * factor + step))
redis.call('HSET', key, 'rate', rate)
redis.call('EXPIRE', key, 3600)
return tostring(rate)
"""


def is_throttle(code: int | None, reply: str) -> bool:
    """421/454, or an x.7.x temporary reply: the relay limits our rate."""
    enhanced = enhanced_code(reply)
    return code in (421, 454) or (enhanced is not None and enhanced[0] == 4 and enhanced[1] == 7)


class RateLimiter:
    def __init__(self, client: redis.Redis, rate: float, *, key: str = "newsletter:send-rate",
                 burst: float = 1.0) -> None:
        self.client = client
        self.rate = rate
        # A burst of one: the measured rate never exceeds the setting, even per second.
        self.burst = burst
        self.key = key
        self._take = client.register_script(_TAKE)
        self._adjust = client.register_script(_ADJUST)

    def feedback(self, code: int | None, reply: str, sent: bool) -> None:
        """Slow down on a throttle reply, speed back up slowly on success."""
        if sent:
            self._adjust(keys=[self.key], args=[self.rate, 1.0, self.rate * 0.02, self.rate / 64])
        elif is_throttle(code, reply):
            self._adjust(keys=[self.key], args=[self.rate, 0.5, 0.0, self.rate / 64])

    def acquire(self) -> None:
        while True:
            wait = float(self._take(keys=[self.key], args=[self.rate, self.burst]))
            if wait <= 0:
                return
            time.sleep(min(wait, 1.0))


def make_throttle(settings) -> RateLimiter | None:
    """The shared limiter, or None when NEWSLETTER_SEND_RATE is 0 (unlimited)."""
    if settings.send_rate <= 0:
        return None
    client = redis.Redis.from_url(settings.broker_url, socket_timeout=settings.smtp_timeout)
    return RateLimiter(client, settings.send_rate)
