"""Which stories readers open, never who opened them (NEWSLETTER_COUNT_CLICKS).

A story link in a digest is `/r/<token>`, the token signing the edition, the story and the
section's region (worker/tokens.py): every reader of a section holds the same bytes. The
redirect answers 302 to the story's URL and adds one to that (edition, story, region)'s
count. The guarantee: the database holds counts and nothing else; no address, cookie or
agent is stored. To discount machines and limit floods, Redis keeps, for at most
DEDUPE_SECONDS, which links a client opened, under a keyed hash of its address that the
key's owner alone can link back to an address, and only by guessing it.

Fetches that are not a reader opening a story are counted apart, as `discounted`
(docs/clicks.md has the reasoning):

- HEAD requests and prefetches (Purpose, Sec-Purpose, X-Purpose or X-Moz saying so);
- agents that say they are a scanner, a bot, a preview or an HTTP library, and no agent;
- a burst: a client opening more than BURST_LINKS different links within BURST_SECONDS
  is a scanner walking the mail; its earlier opens of the burst move to `discounted`,
  and everything it opens for SCANNER_SECONDS after;
- the same client opening the same link again within DEDUPE_SECONDS counts once.

A client past CLICKS_PER_MINUTE gets 429 and no count. When Redis cannot be read the
reader still gets the story, and nothing is counted.

Counts are added up in Redis by the same round trip that judges the request, and moved
into the database every FLUSH_SECONDS (ClickCounter, flush): a request never waits for a
database write, and counts not moved yet stay in Redis until a flush takes them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import astuple, dataclass
from enum import StrEnum

import redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, case, func, select
from sqlalchemy.exc import SQLAlchemyError

from worker.store.db import upsert_insert
from worker.store.models import Edition, Story, StoryClick
from worker.tokens import ClickTarget, read_click_token

log = logging.getLogger(__name__)

C = StoryClick.__table__
CLICKS_PER_MINUTE = 300
BURST_LINKS = 4
BURST_SECONDS = 3
SCANNER_SECONDS = 60
DEDUPE_SECONDS = 600
# A count stops here instead of wrapping: BIGINT's maximum, less room for a batch.
COUNT_CAP = 2**62
PREFIX = "newsletter-clicks"

# Words that agents of scanners, link previews and HTTP libraries put in User-Agent.
MACHINE_AGENT = re.compile(
    r"bot\b|crawl|spider|scan|preview|prefetch|headless|phantomjs|python|curl|wget|go-http|java/|okhttp|"
    r"libwww|httpclient|http-client|aiohttp|axios|node-fetch|undici|guzzle|ruby|perl|"
    r"barracuda|mimecast|proofpoint|urldefense|safelinks|trendmicro|symantec|forcepoint|sophos|fortiguard|"
    r"ironport|zscaler|messagelabs|cloudmark|facebookexternalhit|slackbot|whatsapp|telegrambot|discordbot|"
    r"skypeuripreview|bingpreview|google-safety|googleimageproxy|yahoomailproxy|outlook-ios-linkpreview",
    re.IGNORECASE)
PREFETCH_HEADERS = ("Purpose", "Sec-Purpose", "X-Purpose", "X-Moz")
MAX_AGENT = 512


class Heard(StrEnum):
    COUNTED = "counted"
    DISCOUNTED = "discounted"   # a machine's fetch, counted apart
    REPEAT = "repeat"           # the same client and link again: counted once already
    LIMITED = "limited"         # 429: too many from this client
    UNCOUNTED = "uncounted"     # Redis could not be read: redirected, not counted


def machine(method: str, headers) -> str | None:
    """Why a request is a machine's by itself, or None."""
    if method == "HEAD":
        return "head"
    for name in PREFETCH_HEADERS:
        value = headers.get(name, "")[:MAX_AGENT].lower()
        if "prefetch" in value or "preview" in value or "prerender" in value:
            return "prefetch"
    agent = headers.get("User-Agent", "")[:MAX_AGENT]
    if not agent.strip():
        return "no-agent"
    if MACHINE_AGENT.search(agent):
        return "agent"
    return None


# One round trip decides and counts a request, atomically (a script runs alone in Redis).
# KEYS: the client's request count this minute, the links it opened, its scanner mark, the
# counts not yet in the database. ARGV: now, the token, 1 to judge it as a reader's open
# (0: a machine's by itself), then the limits. Counts are kept under "c:<token>" (opens)
# and "d:<token>" (discounted) until flush() moves them into story_clicks.
_HEAR = """
local rate = redis.call('INCR', KEYS[1])
if rate == 1 then redis.call('EXPIRE', KEYS[1], 120) end
if rate > tonumber(ARGV[4]) then return 'limited' end
local now, token = tonumber(ARGV[1]), ARGV[2]
if ARGV[3] == '0' then
  redis.call('HINCRBY', KEYS[4], 'd:' .. token, 1)
  return 'discounted'
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[8]))
local added = redis.call('ZADD', KEYS[2], 'NX', now, token)
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[8]))
if added == 0 then return 'repeat' end
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[4], 'd:' .. token, 1)
  return 'discounted'
end
local recent = redis.call('ZRANGEBYSCORE', KEYS[2], now - tonumber(ARGV[6]), '+inf')
if #recent > tonumber(ARGV[5]) then
  redis.call('SET', KEYS[3], 1, 'EX', tonumber(ARGV[7]))
  for _, earlier in ipairs(recent) do
    if earlier ~= token then
      redis.call('HINCRBY', KEYS[4], 'c:' .. earlier, -1)
      redis.call('HINCRBY', KEYS[4], 'd:' .. earlier, 1)
    end
  end
  redis.call('HINCRBY', KEYS[4], 'd:' .. token, 1)
  return 'discounted'
end
redis.call('HINCRBY', KEYS[4], 'c:' .. token, 1)
return 'counted'
"""
# How often a web process moves the counts from Redis into the database, and when a batch
# taken by a flush that never finished is taken again.
FLUSH_SECONDS = 2.0
ABANDONED_SECONDS = 60


class ClickCounter:
    """The redirect's side: what a link points to, and one count per open.

    A request costs one HMAC, a cached lookup and one Redis round trip; the counts reach
    the database every FLUSH_SECONDS, from whichever process flushes first, in one
    transaction. Counts waiting in Redis survive a web process's end: the next flush of
    any process takes them."""

    def __init__(self, engine: Engine, *, redis_url: str, secret: str) -> None:
        self._engine = engine
        self._url = redis_url
        self._secret = secret
        self._redis: redis.Redis | None = None
        self._script = None
        self._lock = threading.Lock()
        # (edition, story) -> (URL or None, until): a flood of one link is one query a minute.
        self._targets: dict[tuple[int, int], tuple[str | None, float]] = {}
        self._quiet_until = 0.0
        self._flusher: threading.Thread | None = None
        self._space = namespace(engine, secret)

    def target(self, token: str) -> tuple[ClickTarget, str] | None:
        """The link's target and the story's URL; None for a link we did not sign, or a
        story or edition that no longer exists."""
        target = read_click_token(self._secret, token)
        if target is None:
            return None
        key = (target.edition_id, target.story_id)
        now = time.monotonic()
        found = self._targets.get(key)
        if found is None or found[1] < now:
            with self._engine.connect() as conn:
                url = conn.scalar(select(Story.url).where(Story.id == target.story_id)
                                  .where(select(Edition.id).where(Edition.id == target.edition_id).exists()))
            if len(self._targets) >= 10_000:
                self._targets.clear()
            found = self._targets[key] = (url, now + 60)
        return (target, found[0]) if found[0] else None

    def hear(self, token: str, *, client: str, method: str, headers) -> Heard:
        """Count one request for the link `token` (already known good), or say why not."""
        who = hmac.new(self._secret.encode(), f"{PREFIX}\0{client}".encode(), hashlib.sha256).hexdigest()[:24]
        now = time.time()
        space = self._space
        keys = [f"{space}/rate/{who}/{int(now // 60)}", f"{space}/links/{who}", f"{space}/scanner/{who}",
                f"{space}/counts"]
        reader = "0" if machine(method, headers) else "1"
        try:
            script = self._hear_script()
            heard = script(keys=keys, args=[repr(now), token, reader, CLICKS_PER_MINUTE, BURST_LINKS, BURST_SECONDS,
                                            SCANNER_SECONDS, DEDUPE_SECONDS])
        except RedisError as exc:
            self._complain(exc)
            return Heard.UNCOUNTED
        self._start_flusher()
        return Heard(heard.decode())

    def flush(self) -> int:
        """Move the counts waiting in Redis into the database; how many fields moved."""
        return flush(self._conn(), self._engine, self._secret)

    def _hear_script(self):
        with self._lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self._url, socket_timeout=0.5, socket_connect_timeout=0.5)
                self._script = self._redis.register_script(_HEAR)
            return self._script

    def _conn(self) -> redis.Redis:
        self._hear_script()
        return self._redis

    def _start_flusher(self) -> None:
        # Started by the first counted request, in the process that serves (after gunicorn's fork).
        if self._flusher is None:
            with self._lock:
                if self._flusher is None:
                    self._flusher = threading.Thread(target=self._flush_forever, name="click-counts", daemon=True)
                    self._flusher.start()

    def _flush_forever(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            try:
                self.flush()
            except (RedisError, SQLAlchemyError) as exc:
                self._complain(exc)

    def _complain(self, exc: Exception) -> None:
        if time.monotonic() >= self._quiet_until:
            self._quiet_until = time.monotonic() + 60
            log.warning("clicks: %s unavailable (%s): links redirect, counts wait",
                        "Redis" if isinstance(exc, RedisError) else "the database", type(exc).__name__)


def namespace(engine: Engine, secret: str) -> str:
    """This deployment's keys in Redis: two lists (or a test and a live one) sharing a
    Redis never take each other's counts."""
    where = engine.url.render_as_string(hide_password=True)
    return f"{PREFIX}/{hmac.new(secret.encode(), where.encode(), hashlib.sha256).hexdigest()[:16]}"


def flush_waiting(engine: Engine, secret: str, redis_url: str) -> None:
    """For a reader of the counts (status, stories list, the console): what waits in Redis
    moved first, if Redis answers at once; else the counts as the database has them."""
    if not secret:
        return
    try:
        flush(redis.Redis.from_url(redis_url, socket_timeout=1, socket_connect_timeout=1), engine, secret)
    except (RedisError, SQLAlchemyError) as exc:
        log.info("clicks: counts waiting in Redis not moved (%s)", type(exc).__name__)


def flush(conn: redis.Redis, engine: Engine, secret: str) -> int:
    """Move the counts waiting in Redis into story_clicks; how many fields moved.

    A batch is taken by renaming it to a name of its own (atomic: a request counting
    meanwhile starts a new one, and no two flushes take the same batch), written in one
    transaction, then deleted. A batch left behind (the database refused it, or its
    process died) is taken again, by one flush, once ABANDONED_SECONDS old. A process
    that dies between the commit and the delete counts that batch twice: a few seconds'
    opens, once."""
    counts = f"{namespace(engine, secret)}/counts"
    now = int(time.time())
    mine = []
    for name in conn.scan_iter(f"{counts}/taken/*", count=100):
        stamp = name.decode().rsplit("/", 2)[-2]
        if stamp.isdigit() and now - int(stamp) > ABANDONED_SECONDS:
            mine.append(_take(conn, name, f"{counts}/taken/{now}/{secrets.token_hex(8)}"))
    mine.append(_take(conn, counts, f"{counts}/taken/{now}/{secrets.token_hex(8)}"))
    moved = 0
    for batch in filter(None, mine):
        fields = conn.hgetall(batch)
        deltas: dict[ClickTarget, list[int]] = {}
        for field, value in fields.items():
            kind, _, token = field.decode().partition(":")
            target = read_click_token(secret, token)
            if target is not None and kind in ("c", "d"):
                deltas.setdefault(target, [0, 0])[kind == "d"] += int(value)
        record(engine, deltas)
        conn.delete(batch)
        moved += len(fields)
    return moved


def _take(conn: redis.Redis, name, new: str) -> str | None:
    try:
        conn.rename(name, new)
    except redis.ResponseError:
        return None  # nothing there: nothing counted since, or another flush took it
    return new


def record(engine: Engine, deltas: dict[ClickTarget, list[int]]) -> None:
    """Add each target's (opens, discounted) deltas; a count never goes below zero nor
    past COUNT_CAP. An edition gone since is skipped (its rows went with it)."""
    if not deltas:
        return
    insert = upsert_insert(engine)
    with engine.begin() as conn:
        alive = set(conn.scalars(select(Edition.id).where(Edition.id.in_({t.edition_id for t in deltas}))))
        for target, (clicks, discounted) in sorted(deltas.items(), key=lambda kv: astuple(kv[0])):
            if target.edition_id not in alive:
                continue
            statement = insert(C).values(edition_id=target.edition_id, story_id=target.story_id,
                                         region=target.region, clicks=max(0, min(COUNT_CAP, clicks)),
                                         discounted=max(0, min(COUNT_CAP, discounted)))
            conn.execute(statement.on_conflict_do_update(
                index_elements=["edition_id", "story_id", "region"],
                set_={"clicks": _bounded(C.c.clicks + clicks), "discounted": _bounded(C.c.discounted + discounted)}))


def _bounded(value):
    return case((value < 0, 0), (value > COUNT_CAP, COUNT_CAP), else_=value)


@dataclass(frozen=True)
class Opened:
    story_id: int
    title: str | None     # None: the story was deleted since
    url: str | None
    clicks: int
    discounted: int
    regions: dict[str, int]


def opened(engine: Engine, *, edition_ids: list[int] | None = None, story_ids: list[int] | None = None,
           limit: int | None = None) -> list[Opened]:
    """Opens per story (most first), with each region's share, of these editions or stories."""
    query = select(C.c.story_id, C.c.region, func.sum(C.c.clicks), func.sum(C.c.discounted)) \
        .group_by(C.c.story_id, C.c.region)
    if edition_ids is not None:
        query = query.where(C.c.edition_id.in_(edition_ids))
    if story_ids is not None:
        query = query.where(C.c.story_id.in_(story_ids))
    totals: dict[int, list] = {}
    with engine.connect() as conn:
        for story_id, region, clicks, discounted in conn.execute(query):
            entry = totals.setdefault(story_id, [0, 0, {}])
            entry[0] += int(clicks or 0)
            entry[1] += int(discounted or 0)
            if clicks:
                entry[2][region] = entry[2].get(region, 0) + int(clicks)
        ranked = sorted(totals.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
        stories = dict((row.id, row) for row in conn.execute(
            select(Story.id, Story.title, Story.url).where(Story.id.in_([story_id for story_id, _ in ranked]))))
    return [Opened(story_id, getattr(stories.get(story_id), "title", None), getattr(stories.get(story_id), "url", None),
                   clicks, discounted, regions) for story_id, (clicks, discounted, regions) in ranked]


def opens_of(engine: Engine, story_ids: list[int]) -> dict[int, int]:
    """Readers' opens of these stories in every edition: story id -> opens (absent: none)."""
    if not story_ids:
        return {}
    found = opened(engine, story_ids=story_ids if len(story_ids) <= 1000 else None)
    return {o.story_id: o.clicks for o in found if o.clicks}


@dataclass(frozen=True)
class EditionOpens:
    """An edition's opens: its most opened stories (each opened at least once), all its
    readers' opens, and the fetches discounted as machines'."""

    stories: tuple[Opened, ...] = ()
    clicks: int = 0
    discounted: int = 0


def edition_opens(engine: Engine, edition_id: int, *, most: int = 10) -> EditionOpens:
    every = opened(engine, edition_ids=[edition_id])
    return EditionOpens(tuple(o for o in every[:most] if o.clicks), sum(o.clicks for o in every),
                        sum(o.discounted for o in every))


def totals(engine: Engine) -> tuple[int, int]:
    """Every open counted and every fetch discounted, over all editions: /metrics' counters."""
    with engine.connect() as conn:
        row = conn.execute(select(func.coalesce(func.sum(C.c.clicks), 0),
                                  func.coalesce(func.sum(C.c.discounted), 0))).one()
    return int(row[0]), int(row[1])
