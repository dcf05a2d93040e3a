"""Signed values, all keyed by NEWSLETTER_SECRET_KEY, each kind with its own salt so that
a token made for one purpose is worthless for any other:

- unsubscribe and manage tokens: a subscriber id and the reader's link key, never expiring
  (they sit in old mail); the key is random, stored in the reader's row (`link_key`), so a
  link dies with the row it was made for: after a purge, or for another row that got the id;
- confirmation tokens: a subscriber id and the nonce of their one live link, expiring;
- form tokens: the CSRF token of a readers' page form, bound to subscriber and purpose;
- click tokens: an edition, a story and the section's region, never a reader: every
  reader of a section holds the same link (worker/clicks.py);
- Message-IDs.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from itsdangerous import BadSignature, SignatureExpired, Signer, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"
MANAGE_SALT = "newsletter.manage.v1"
CONFIRM_SALT = "newsletter.confirm.v1"
FORM_SALT = "newsletter.form.v1"
CLICK_SALT = b"newsletter.click.v1"
# A link is a path segment: anything longer than this was not made here.
MAX_TOKEN = 400
# Link keys as new_link_key makes them (and "" for a test send's links): JSON as they are.
_KEY = re.compile(r"[A-Za-z0-9_-]{0,32}")


# A reader's link key: 96 random bits, URL-safe base64 (16 characters).
LINK_KEY_BYTES = 12
LINK_KEY_CHARS = 16


def new_link_key() -> str:
    return secrets.token_urlsafe(LINK_KEY_BYTES)


@dataclass(frozen=True)
class ReaderLink:
    """What a reader's link names: the row's id and its link key. `key` is None for a link
    made before rows had keys (the id alone), which only the unsubscribe link still honours,
    and only for rows that existed then (Subscriber.legacy_links)."""

    subscriber_id: int
    key: str | None


def unsubscribe_token(secret: str, subscriber_id: int, key: str) -> str:
    """Carries the subscriber id and link key and never expires (RFC 8058 links must keep working).

    Exactly URLSafeSerializer(secret, salt).dumps([subscriber_id, key]), made once per
    message: the serializer tries zlib on every payload (50 us, most of its cost), which
    for a payload this short can never win (zlib's own framing is longer), so that payload
    is the JSON in base64, signed by the serializer's default signer.
    """
    return _id_token(secret, subscriber_id, key, UNSUBSCRIBE_SALT)


def read_unsubscribe_token(secret: str, token: str) -> ReaderLink | None:
    """The link, or None for a tampered, foreign or malformed token."""
    return _read_id_token(secret, token, UNSUBSCRIBE_SALT)


def manage_token(secret: str, subscriber_id: int, key: str) -> str:
    """The manage page's link (regions, name, leaving): like the unsubscribe token, another salt."""
    return _id_token(secret, subscriber_id, key, MANAGE_SALT)


def read_manage_token(secret: str, token: str) -> ReaderLink | None:
    return _read_id_token(secret, token, MANAGE_SALT)


def link_opens(link: ReaderLink, *, key: str | None, legacy: bool) -> bool:
    """The link was made for this row: its key, or (a link from before keys) a row from then."""
    if link.key is None:
        return legacy
    return key is not None and hmac.compare_digest(link.key.encode(), key.encode())


def _id_token(secret: str, subscriber_id: int, key: str, salt: str) -> str:
    if 0 <= subscriber_id < 10**10 and _KEY.fullmatch(key):
        return _signer(secret, salt).sign(base64_encode(f'[{subscriber_id},"{key}"]')).decode()
    return URLSafeSerializer(secret, salt=salt).dumps([subscriber_id, key])


@functools.lru_cache(maxsize=16)
def _signer(secret: str, salt: str) -> Signer:
    return URLSafeSerializer(secret, salt=salt).make_signer()


def _read_id_token(secret: str, token: str, salt: str) -> ReaderLink | None:
    if len(token) > MAX_TOKEN:
        return None
    try:
        value = URLSafeSerializer(secret, salt=salt).loads(token)
    except (BadSignature, ValueError, UnicodeError):
        return None
    if _is_id(value):
        return ReaderLink(value, None)
    if isinstance(value, list) and len(value) == 2 and _is_id(value[0]) and isinstance(value[1], str):
        return ReaderLink(value[0], value[1])
    return None


class TokenProblem(StrEnum):
    INVALID = "invalid"    # tampered, foreign, malformed
    EXPIRED = "expired"    # genuine, but older than its lifetime


@dataclass(frozen=True)
class ConfirmToken:
    subscriber_id: int
    nonce: str


def confirm_token(secret: str, subscriber_id: int, nonce: str) -> str:
    """The confirmation link's token. It names the subscriber and the nonce of their one
    live link; what confirming applies is in the database, so the link holds no personal data."""
    return URLSafeTimedSerializer(secret, salt=CONFIRM_SALT).dumps([subscriber_id, nonce])


def read_confirm_token(secret: str, token: str, *, max_age: int) -> ConfirmToken | TokenProblem:
    if len(token) > MAX_TOKEN:
        return TokenProblem.INVALID
    try:
        value = URLSafeTimedSerializer(secret, salt=CONFIRM_SALT).loads(token, max_age=max_age)
    except SignatureExpired:
        return TokenProblem.EXPIRED
    except (BadSignature, ValueError, UnicodeError):
        return TokenProblem.INVALID
    if (isinstance(value, list) and len(value) == 2 and _is_id(value[0]) and isinstance(value[1], str)
            and 0 < len(value[1]) <= 32):
        return ConfirmToken(value[0], value[1])
    return TokenProblem.INVALID


def form_token(secret: str, *, subscriber_id: int, purpose: str) -> str:
    """A form's CSRF token: signed, timestamped, for one subscriber and one form."""
    return URLSafeTimedSerializer(secret, salt=FORM_SALT).dumps([subscriber_id, purpose])


def check_form_token(secret: str, token: str, *, subscriber_id: int, purpose: str, max_age: int) -> bool:
    if not token or len(token) > MAX_TOKEN:
        return False
    try:
        value = URLSafeTimedSerializer(secret, salt=FORM_SALT).loads(token, max_age=max_age)
    except (BadSignature, ValueError, UnicodeError):
        return False
    return value == [subscriber_id, purpose]


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True)
class ClickTarget:
    edition_id: int
    story_id: int
    region: str


# 96 bits of HMAC: a forged link is a guess in 2**96. Ids in decimal, region as ISO letters.
_CLICK = re.compile(r"([1-9][0-9]{0,9})\.([1-9][0-9]{0,11})\.([A-Z]{2})\.([A-Za-z0-9_-]{16})")


def click_token(secret: str, target: ClickTarget) -> str:
    """`<edition>.<story>.<REGION>.<mac>`: short, and the same for every reader of a section."""
    payload = f"{target.edition_id}.{target.story_id}.{target.region}"
    return f"{payload}.{_click_mac(secret, payload)}"


def read_click_token(secret: str, token: str) -> ClickTarget | None:
    """The link's target, or None for anything this deployment's key did not sign."""
    found = _CLICK.fullmatch(token) if secret and len(token) <= 64 else None
    if found is None:
        return None
    edition, story, region, mac = found.groups()
    if not hmac.compare_digest(mac, _click_mac(secret, f"{edition}.{story}.{region}")):
        return None
    return ClickTarget(int(edition), int(story), region)


def _click_mac(secret: str, payload: str) -> str:
    digest = hmac.new(_click_key(secret), payload.encode(), hashlib.sha256).digest()
    return base64_encode(digest[:12]).decode()


@functools.lru_cache(maxsize=4)
def _click_key(secret: str) -> bytes:
    # Its own key, derived once: no other token's MAC can be replayed as a click's.
    return hmac.new(secret.encode(), CLICK_SALT, hashlib.sha256).digest()


def message_id(secret: str, *, edition_key: str, subscriber: str | int, domain: str) -> str:
    """Stable for (edition, subscriber), unguessable without the key."""
    digest = hmac.new(secret.encode(), f"{edition_key}\x00{subscriber}".encode(), hashlib.sha256)
    return f"<{digest.hexdigest()[:40]}@{domain}>"
