"""Signed values: unsubscribe tokens and Message-IDs, both keyed by NEWSLETTER_SECRET_KEY."""

from __future__ import annotations

import functools
import hashlib
import hmac

from itsdangerous import BadSignature, Signer, URLSafeSerializer
from itsdangerous.encoding import base64_encode

# A dedicated salt: a token signed for anything else never unsubscribes anyone.
UNSUBSCRIBE_SALT = "newsletter.unsubscribe.v1"


def unsubscribe_token(secret: str, subscriber_id: int) -> str:
    """Carries the subscriber id and never expires (RFC 8058 links must keep working).

    Exactly URLSafeSerializer(secret, salt).dumps(subscriber_id), made once per message:
    the serializer tries zlib on every payload (50 us, most of its cost), which for an
    id of up to ten digits can never win (zlib's own framing is longer), so that payload
    is the id's JSON in base64, signed by the serializer's default signer.
    """
    if 0 <= subscriber_id < 10**10:
        return _signer(secret).sign(base64_encode(str(subscriber_id))).decode()
    return URLSafeSerializer(secret, salt=UNSUBSCRIBE_SALT).dumps(subscriber_id)


@functools.lru_cache(maxsize=4)
def _signer(secret: str) -> Signer:
    return URLSafeSerializer(secret, salt=UNSUBSCRIBE_SALT).make_signer()


def read_unsubscribe_token(secret: str, token: str) -> int | None:
    """The subscriber id, or None for a tampered, foreign or malformed token."""
    try:
        value = URLSafeSerializer(secret, salt=UNSUBSCRIBE_SALT).loads(token)
    except (BadSignature, ValueError, UnicodeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def message_id(secret: str, *, edition_key: str, subscriber: str | int, domain: str) -> str:
    """Stable for (edition, subscriber), unguessable without the key."""
    digest = hmac.new(secret.encode(), f"{edition_key}\x00{subscriber}".encode(), hashlib.sha256)
    return f"<{digest.hexdigest()[:40]}@{domain}>"
