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
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import threading
import time
from dataclasses import dataclass
from enum import StrEnum

import redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, case, func, select, update
from sqlalchemy.exc import SQLAlchemyError

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


@dataclass(frozen=True)
class _Seen:
    rate: int
    new: bool
    recent: int
    scanner: bool


class ClickCounter:
    """The redirect's side: what a link points to, and one count per open."""

    def __init__(self, engine: Engine, *, redis_url: str, secret: str) -> None:
        self._engine = engine
        self._url = redis_url
        self._secret = secret
        self._redis: redis.Redis | None = None
        self._lock = threading.Lock()
        # (edition, story) -> (URL or None, until): a flood of one link is one query a minute.
        self._targets: dict[tuple[int, int], tuple[str | None, float]] = {}
        self._quiet_until = 0.0

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

    def hear(self, target: ClickTarget, token: str, *, client: str, method: str, headers) -> Heard:
        """Count one request for `target` (already known good), or say why not."""
        by_itself = machine(method, headers)
        try:
            seen = self._seen(client, token, track=by_itself is None)
        except RedisError as exc:
            self._complain(exc)
            return Heard.UNCOUNTED
        if seen.rate > CLICKS_PER_MINUTE:
            return Heard.LIMITED
        if by_itself is None and not seen.new:
            return Heard.REPEAT
        heard = Heard.COUNTED
        if by_itself is not None or seen.scanner:
            heard = Heard.DISCOUNTED
        elif seen.recent > BURST_LINKS:
            heard = Heard.DISCOUNTED
            try:
                self._burst(client, token)
            except RedisError as exc:
                self._complain(exc)
        add(self._engine, target, counted=heard is Heard.COUNTED)
        return heard

    def _client(self, client: str) -> str:
        return hmac.new(self._secret.encode(), f"{PREFIX}\0{client}".encode(), hashlib.sha256).hexdigest()[:24]

    def _conn(self) -> redis.Redis:
        with self._lock:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self._url, socket_timeout=0.5, socket_connect_timeout=0.5)
            return self._redis

    def _seen(self, client: str, token: str, *, track: bool) -> _Seen:
        who = self._client(client)
        now = time.time()
        minute = int(now // 60)
        pipe = self._conn().pipeline(transaction=False)
        pipe.incr(f"{PREFIX}/rate/{who}/{minute}")
        pipe.expire(f"{PREFIX}/rate/{who}/{minute}", 120)
        pipe.exists(f"{PREFIX}/scanner/{who}")
        if track:
            links = f"{PREFIX}/links/{who}"
            pipe.zremrangebyscore(links, "-inf", now - DEDUPE_SECONDS)
            pipe.zadd(links, {token: now}, nx=True)
            pipe.zcount(links, now - BURST_SECONDS, "+inf")
            pipe.expire(links, DEDUPE_SECONDS)
        replies = pipe.execute()
        if not track:
            return _Seen(replies[0], False, 0, bool(replies[2]))
        return _Seen(replies[0], bool(replies[4]), replies[5], bool(replies[2]))

    def _burst(self, client: str, token: str) -> None:
        """The client turned out to be a scanner: what it opened in the burst, counted as
        readers' opens a moment ago, moves to discounted (once, whichever process sees it)."""
        who = self._client(client)
        conn = self._conn()
        if not conn.set(f"{PREFIX}/scanner/{who}", 1, nx=True, ex=SCANNER_SECONDS):
            return
        now = time.time()
        earlier = conn.zrangebyscore(f"{PREFIX}/links/{who}", now - BURST_SECONDS - 1, "+inf")
        targets = [read_click_token(self._secret, raw.decode()) for raw in earlier if raw.decode() != token]
        discount(self._engine, [t for t in targets if t is not None][:BURST_LINKS])

    def _complain(self, exc: Exception) -> None:
        if time.monotonic() >= self._quiet_until:
            self._quiet_until = time.monotonic() + 60
            log.warning("clicks: Redis unavailable (%s): links redirect, nothing is counted", type(exc).__name__)


def _insert(engine: Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _plus_one(column):
    return case((column < COUNT_CAP, column + 1), else_=column)


def add(engine: Engine, target: ClickTarget, *, counted: bool) -> None:
    """One open, or one discounted fetch, of the target: one statement."""
    insert = _insert(engine)
    statement = insert(C).values(edition_id=target.edition_id, story_id=target.story_id, region=target.region,
                                 clicks=int(counted), discounted=int(not counted))
    column = C.c.clicks if counted else C.c.discounted
    statement = statement.on_conflict_do_update(index_elements=["edition_id", "story_id", "region"],
                                                set_={column.name: _plus_one(column)})
    try:
        with engine.begin() as conn:
            conn.execute(statement)
    except SQLAlchemyError as exc:
        # The edition went while the link was cached: the reader still gets the story.
        log.warning("clicks: not counted (%s)", type(exc).__name__)


def discount(engine: Engine, targets: list[ClickTarget]) -> None:
    """Move one open of each target to discounted, never below zero."""
    if not targets:
        return
    with engine.begin() as conn:
        for target in targets:
            conn.execute(update(C).where(C.c.edition_id == target.edition_id, C.c.story_id == target.story_id,
                                         C.c.region == target.region, C.c.clicks > 0)
                         .values(clicks=C.c.clicks - 1, discounted=_plus_one(C.c.discounted)))


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
