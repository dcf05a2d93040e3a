"""SQLAlchemy 2 models. The same code runs on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.sql.functions import FunctionElement

from worker.clock import utcnow
from worker.tokens import new_link_key

# Stable constraint names so Alembic migrations are the same on both databases.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class RandomKey(FunctionElement):
    """A random 32-hex-digit value the database makes (a column's server default)."""
    name = "random_key"
    inherit_cache = True


@compiles(RandomKey, "sqlite")
def _random_key_sqlite(element, compiler, **kw) -> str:
    return "(lower(hex(randomblob(16))))"


@compiles(RandomKey, "postgresql")
def _random_key_postgresql(element, compiler, **kw) -> str:
    return "replace(gen_random_uuid()::text, '-', '')"


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in, aware UTC datetimes out, on SQLite too.

    SQLite has no time zone type; storing naive UTC and re-attaching UTC on the
    way out keeps comparisons and ordering right on both databases.
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Story(Base):
    __tablename__ = "stories"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Feed guid, or the URL when there is none; the upsert key.
    guid: Mapped[str] = mapped_column(String(1024), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    title: Mapped[str] = mapped_column(String(500))
    summary_html: Mapped[str] = mapped_column(Text, default="")
    summary_text: Mapped[str] = mapped_column(Text, default="")
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    source: Mapped[str] = mapped_column(String(200), default="")
    image_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    # The BCP 47 tag its feed stated (worker/ingest/clean.py), the story's `lang` in a digest.
    language: Mapped[str | None] = mapped_column(String(35), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    regions: Mapped[list[StoryRegion]] = relationship(
        back_populates="story", cascade="all, delete-orphan", lazy="selectin",
        order_by="StoryRegion.position",
    )

    @property
    def region_codes(self) -> list[str]:
        return [r.region for r in self.regions]


class StoryRegion(Base):
    __tablename__ = "story_regions"

    story_id: Mapped[int] = mapped_column(
        ForeignKey("stories.id", ondelete="CASCADE"), primary_key=True
    )
    region: Mapped[str] = mapped_column(String(2), primary_key=True)
    position: Mapped[int] = mapped_column(default=0)

    story: Mapped[Story] = relationship(back_populates="regions")

    __table_args__ = (Index("ix_story_regions_region", "region"),)


class SubscriberStatus(StrEnum):
    PENDING = "pending"            # signed up on the web, not confirmed yet: never mailed a digest
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


# The CHECK on subscribers.status, here and in migration 0008 (which changes it in place on SQLite).
STATUS_CHECK = "status IN ('pending', 'active', 'unsubscribed', 'bounced', 'complained')"


class Subscriber(Base):
    __tablename__ = "subscribers"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The address as email-validator normalised it (domain lower-cased, IDN in Unicode).
    email: Mapped[str] = mapped_column(String(320))
    # The de-duplication key: NFC local part, ASCII letters lower-cased, @ the domain's
    # lower-case IDNA 2008 A-label (worker.readers.subscribers.address_key).
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Ordered region codes, space separated ("RU UA"). One text value per
    # subscriber is also the variant key: planning an edition groups by it
    # inside the database instead of loading subscribers into Python.
    regions: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=SubscriberStatus.ACTIVE.value)
    status_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # The one live confirmation link (worker/readers/signup.py): its nonce, when it was
    # mailed (at most one mail an hour), and what confirming it applies. What was asked
    # is kept here, not in the link: a link carries no personal data, and a later
    # request cannot change what an earlier mail said it would confirm.
    confirm_nonce: Mapped[str | None] = mapped_column(String(32), nullable=True)
    confirm_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    confirm_regions: Mapped[str | None] = mapped_column(String(200), nullable=True)
    confirm_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # An IANA zone name; NULL: the first region's main zone, then NEWSLETTER_TIMEZONE.
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The zone a sign-up asked for, applied with its confirmation; NULL: it asked for none.
    confirm_timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The language of our words in their mail and pages (worker/i18n.py: one of the catalogs
    # shipped); NULL: NEWSLETTER_LANGUAGE. confirm_language: what a sign-up asked for.
    language: Mapped[str | None] = mapped_column(String(16), nullable=True)
    confirm_language: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Temporary delivery failures reported in a row across editions (worker/bounces).
    transient_bounces: Mapped[int] = mapped_column(default=0, server_default="0")
    # Signed into every link of theirs (worker/tokens.py) besides the id: a link opens only
    # the row it was made for, never one made after a purge (migration 0015).
    # A row written outside the ORM gets one from the database (migration 0020).
    link_key: Mapped[str] = mapped_column(String(32), default=new_link_key, server_default=RandomKey())
    # The row existed before links carried a key: its old id-only unsubscribe links in mail
    # already sent keep working (RFC 8058); no row made since has any.
    legacy_links: Mapped[bool] = mapped_column(default=False, server_default=false())

    __table_args__ = (
        CheckConstraint(STATUS_CHECK, name="status"),
        Index("ix_subscribers_status_regions", "status", "regions"),
        # The console's search and filters read only this, in the key's order (migration 0023).
        Index("ix_subscribers_search", "email_key", "status", "regions", "name"),
        # Ids are never handed out twice (SQLite reuses the highest freed one without this).
        {"sqlite_autoincrement": True},
    )

    @property
    def region_list(self) -> list[str]:
        return self.regions.split()


class EventKind(StrEnum):
    """What changed for a subscriber."""

    REQUESTED = "requested"              # asked to subscribe; a confirmation link was mailed
    CONFIRM_FAILED = "confirm-failed"    # that mail could not be delivered (note: the reply)
    CONFIRMED = "confirmed"              # pending -> active by the link
    SUBSCRIBED = "subscribed"            # added active by an operator (import, CLI)
    REACTIVATED = "reactivated"          # unsubscribed/bounced/complained -> active
    REGIONS_CHANGED = "regions-changed"
    NAME_CHANGED = "name-changed"        # the name itself is on the row, not in the history
    ZONE_CHANGED = "zone-changed"        # the time zone the mail is timed by; the zone is on the row
    LANGUAGE_CHANGED = "language-changed"  # the language of their mail; the note says which
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class ChangeVia(StrEnum):
    """How a change came about."""

    FORM = "form"                        # POST /subscribe
    CONFIRM_LINK = "confirm-link"        # the link in the confirmation mail
    MANAGE_PAGE = "manage-page"
    REGION_LINK = "region-link"          # "Stop <region> news" in a digest
    ONE_CLICK = "one-click"              # RFC 8058 POST to List-Unsubscribe
    UNSUBSCRIBE_PAGE = "unsubscribe-page"  # the confirm page behind the footer's Unsubscribe
    IMPORT = "import"
    CLI = "cli"
    OPERATOR_PAGE = "operator-page"      # /operator (a reactivation)
    BOUNCE = "bounce"                    # a report after the relay accepted the message (worker/bounces)
    REFUSED_AT_SEND = "refused-at-send"  # the relay's permanent 5xx while sending (the ledger)


class SubscriberEvent(Base):
    """Every change to a subscriber, with when and how, and the status and regions it
    left them with: enough to say why someone did or did not get a given edition.
    Deleted with the subscriber (a purge keeps nothing)."""

    __tablename__ = "subscriber_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(24))
    via: Mapped[str] = mapped_column(String(24))
    # After the change.
    status: Mapped[str] = mapped_column(String(16))
    regions: Mapped[str] = mapped_column(String(200))
    # A reason or reply (at most 1,000 characters); never a name or an address.
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Who made the change when a person did it for the reader: an operator's name, or the
    # OS user of a command ("cli (anna)"); NULL: the reader, a mail server or the worker.
    by: Mapped[str | None] = mapped_column(String(64), nullable=True)

    __table_args__ = (Index("ix_subscriber_events_subscriber_id", "subscriber_id", "id"),
                      # The console's weekly counts read a range of instants by kind.
                      Index("ix_subscriber_events_at", "at", "kind"))


class EditionState(StrEnum):
    SENDING = "sending"   # planned; batches are handed out
    PAUSED = "paused"     # no batches handed out until resumed
    DONE = "done"         # no row left pending, sending or due for retry
    SKIPPED = "skipped"   # never sent (missed the catch-up window, or discarded), with a reason
    HELD = "held"         # planned, not handed out: the week looked wrong or review mode; see reason


# The CHECK on editions.state, here and in migration 0009 (which changes it in place on SQLite).
EDITION_STATE_CHECK = "state IN ('sending', 'paused', 'done', 'skipped', 'held')"


class DeliveryState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"   # claimed for one SMTP transaction right now
    SENT = "sent"
    FAILED = "failed"     # temporary; retried at next_attempt_at, final when that is NULL
    BOUNCED = "bounced"   # permanent mailbox refusal; the subscriber is suppressed
    SKIPPED = "skipped"   # with skip_reason
    UNKNOWN = "unknown"   # the server may have accepted it; reported, never re-sent


class Edition(Base):
    __tablename__ = "editions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # 'weekly-2025-W05', 'manual-2025-01-27..2025-02-03', '...-force-2': unique, so
    # two beats, a restarted beat or a double trigger all land on one row.
    key: Mapped[str] = mapped_column(String(120), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(40))
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(String(16), default=EditionState.SENDING.value)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    total: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Paused by a run of temporary failures: when it next probes the relay (worker/delivery/relay.py),
    # and how many probes failed so far. NULL: paused until a person resumes it.
    resume_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    probes: Mapped[int] = mapped_column(default=0, server_default="0")

    __table_args__ = (
        CheckConstraint(EDITION_STATE_CHECK, name="state"),
        {"sqlite_autoincrement": True},
    )


class Delivery(Base):
    """One row per (edition, subscriber): the ledger. See worker/delivery/ledger/ (its guarantee in __init__.py)."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    # The subscriber's ordered region set when the edition was planned: the variant.
    regions: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING.value)
    skip_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Who holds the row and until when: a batch lease while pending, the
    # one-transaction lease while sending.
    claimed_by: Mapped[str | None] = mapped_column(String(80), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The task (Celery task id) a batch lease is for: a retry or redelivery of that task
    # takes its rows back from whichever process held them.
    batch_token: Mapped[str | None] = mapped_column(String(64), nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_code: Mapped[int | None] = mapped_column(nullable=True)
    last_reply: Mapped[str | None] = mapped_column(Text, nullable=True)
    message_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Not handed out before this (the send time in the reader's zone); NULL: at once.
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # An `unknown` row decided by an operator (worker/delivery/resolve.py): 'sent' or
    # 'resend', who and when. NULL: never unknown, or not decided.
    resolution: Mapped[str | None] = mapped_column(String(16), nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(120), nullable=True)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        UniqueConstraint("edition_id", "subscriber_id", name="uq_deliveries_edition_subscriber"),
        # Not (edition_id, state): updates that change `state` would then write the index
        # each time; without it PostgreSQL can update rows in place (migration 0004). The id
        # lets "any open row left?" walk one edition from its newest row (migration 0005).
        Index("ix_deliveries_edition_id", "edition_id", "id"),
        CheckConstraint(
            "state IN ('pending', 'sending', 'sent', 'failed', 'bounced', 'skipped', 'unknown')",
            name="state",
        ),
        # A delivery id is in VERP tags: never handed out twice.
        {"sqlite_autoincrement": True},
    )


class BounceKind(StrEnum):
    PERMANENT = "permanent"   # the mailbox does not exist or refuses for good
    TRANSIENT = "transient"   # full mailbox, greylisting that gave up, ...
    COMPLAINT = "complaint"   # the reader marked it as spam (feedback loop)
    # Refused for our side after the relay accepted it (x.7.x policy or authentication,
    # 5.1.7/5.1.8 our sender): recorded and shown, never counted against the reader.
    SENDER = "sender"
    # About a delivery of ours, but its reason cannot be read: kept for the operator
    # (`newsletter bounces review`), who makes it permanent or dismisses it.
    REVIEW = "review"
    DISMISSED = "dismissed"


class BounceEvent(Base):
    """A report heard after the relay accepted a message: a DSN, an ARF complaint or a
    provider's event. Unique by fingerprint, so the same report twice changes nothing."""

    __tablename__ = "bounce_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    # 'dsn', 'arf', 'ses', 'json'
    source: Mapped[str] = mapped_column(String(16))
    delivery_id: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("deliveries.id", ondelete="SET NULL"), nullable=True)
    edition_id: Mapped[int | None] = mapped_column(
        ForeignKey("editions.id", ondelete="CASCADE"), nullable=True)
    subscriber_id: Mapped[int | None] = mapped_column(
        ForeignKey("subscribers.id", ondelete="CASCADE"), nullable=True)
    recipient: Mapped[str | None] = mapped_column(String(320), nullable=True)
    # The enhanced status code ("5.1.1") when the report has one.
    code: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Why it failed ("userunknown", "mailboxfull", "blocked": worker/bounces/reasons.py).
    reason: Mapped[str | None] = mapped_column(String(24), nullable=True)
    diagnostic: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (Index("ix_bounce_events_edition_id", "edition_id", "kind"),
                      Index("ix_bounce_events_delivery_id", "delivery_id", "kind"),
                      # /metrics and `status` count the reports waiting for review at each look.
                      Index("ix_bounce_events_kind", "kind"))


class Worker(Base):
    """A process that may hold batch leases, and when it last said it was alive."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(80), primary_key=True)  # deliveries.claimed_by
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Variant(Base):
    """One edition's rendered digest for one ordered region set, inlined once and shared
    by every worker process (and served as the "view online" page: what was sent)."""

    __tablename__ = "variants"

    id: Mapped[int] = mapped_column(primary_key=True)
    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"))
    regions: Mapped[str] = mapped_column(String(200))
    # NULL while the process that claimed the render is still rendering.
    subject: Mapped[str | None] = mapped_column(Text, nullable=True)
    html: Mapped[str | None] = mapped_column(Text, nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    story_count: Mapped[int] = mapped_column(default=0)
    # The nonce of the personal-value markers in html and text (worker.render.personalise).
    marker: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The whole edition for the archive page when the mailed html was shortened to pass
    # under Gmail's clip (worker/render/clip.py); NULL: html is the whole edition.
    online_html: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The language of our words in it (worker/i18n.py): a region set has a variant per language.
    language: Mapped[str] = mapped_column(String(16), default="en", server_default="en")

    __table_args__ = (
        UniqueConstraint("edition_id", "regions", "language", name="uq_variants_edition_regions_language"),
    )


class Source(Base):
    """A feed URL or file polled on a schedule (worker/ingest/sources.py), with its health.

    The validators (etag, last_modified) are saved only with the stories they came with,
    so a poll that fetched but could not store asks for the whole feed again next time."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2048), unique=True)
    region: Mapped[str | None] = mapped_column(String(2), nullable=True)
    # 'cli' (sources add) or 'config' ([[sources]] in the TOML file).
    origin: Mapped[str] = mapped_column(String(16), default="cli")
    etag: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    last_modified: Mapped[str | None] = mapped_column(String(200), nullable=True)
    last_polled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    last_error_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Stories added by this source over its life; items rejected on its last full read.
    items_added: Mapped[int] = mapped_column(default=0)
    last_rejected: Mapped[int] = mapped_column(default=0)
    consecutive_failures: Mapped[int] = mapped_column(default=0)
    # Due when NULL or past; pushed back exponentially while failing.
    next_poll_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Operator(Base):
    """A named operator of the console and the machine routes (worker/operators). Only a
    slow hash of the token is kept: the token itself is printed once, when it is made."""

    __tablename__ = "operators"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40), unique=True)
    token_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(64))
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = ({"sqlite_autoincrement": True},)


class AuditEvent(Base):
    """One change an operator made, through the console or the command line: who, when,
    what and on what. Kept when the reader it names is purged (the target then says only
    "a purged reader"): it is the operators' record, not the reader's."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    who: Mapped[str] = mapped_column(String(64))
    # 'cli' or 'console'.
    via: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(48))
    target: Mapped[str | None] = mapped_column(String(400), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_audit_events_at", "at"),)


class EditionTally(Base):
    """What the console counts from a finished edition's deliveries (worker/delivery/tallies.py),
    stored: an edition has as many rows as the list has readers, too many to count at each
    look. Good while `finished_at` is the edition's; whatever changes the edition's rows
    afterwards deletes it in the same transaction."""

    __tablename__ = "edition_tallies"

    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"), primary_key=True,
                                            autoincrement=False)
    # NULL: a live edition's count, shown until it is LIVE_MAX_AGE old.
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    made_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Counts by state, retries, skip reasons: what the dashboard reads for many editions.
    summary: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)


class StoryClick(Base):
    """How often a story's link in one section of one edition was opened through the /r/
    redirect (worker/clicks.py): a count per (edition, story, region), nothing about who.
    `discounted` counts what looked like a machine (a link scanner, a prefetch) instead."""

    __tablename__ = "story_clicks"

    edition_id: Mapped[int] = mapped_column(ForeignKey("editions.id", ondelete="CASCADE"), primary_key=True,
                                            autoincrement=False)
    # No foreign key: an edition's counts outlive a story deleted since (its title is then gone).
    story_id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    region: Mapped[str] = mapped_column(String(2), primary_key=True)
    clicks: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    discounted: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")

    # The wider digest and `stories list` rank a week's stories by their opens in any edition.
    __table_args__ = (Index("ix_story_clicks_story_id", "story_id"),)
