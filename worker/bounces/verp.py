"""VERP: the envelope sender (MAIL FROM) of each message names its delivery, so a bounce,
which goes to that address, says which delivery failed even when its body says nothing
useful. `bounces@bounce.example.org` becomes `bounces+<tag>@bounce.example.org`.

The tag is `<delivery id in base32>` + `<MAC in base32>`, lower case and without padding:
relays may change the case of a local part, and base32's alphabet survives that. The MAC
(keyed BLAKE2b, 64 bits, a salt of its own) makes a forged report for someone else's
delivery worthless: guessing one means mailing us about 2**63 times. It runs once per
message on the hot path: one hash call and a base32 of ten bytes.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
from dataclasses import dataclass

VERP_SALT = b"newsletter.verp.v1"
MAC_BYTES = 8
# A delivery id fits 8 bytes; with the MAC, 16 bytes at most: 26 characters.
MAX_TAG = 26
_TAG = re.compile(r"[a-z2-7]{2,26}")


@functools.lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    # BLAKE2b takes a key of at most 64 bytes; the secret key may be longer.
    return hashlib.sha256(VERP_SALT + b"\x00" + secret.encode()).digest()


def _mac(key: bytes, raw_id: bytes) -> bytes:
    return hashlib.blake2b(raw_id, key=key, digest_size=MAC_BYTES, person=b"verp").digest()


def make_tag(secret: str, delivery_id: int) -> str:
    raw_id = delivery_id.to_bytes((delivery_id.bit_length() + 7) // 8 or 1, "big")
    return base64.b32encode(raw_id + _mac(_key(secret), raw_id)).decode().rstrip("=").lower()


def read_tag(secret: str, tag: str) -> int | None:
    """The delivery id, or None for anything we did not make (any case)."""
    tag = tag.lower()
    if not _TAG.fullmatch(tag):
        return None
    try:
        raw = base64.b32decode(tag.upper() + "=" * (-len(tag) % 8))
    except ValueError:
        return None
    raw_id, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not raw_id or not hmac.compare_digest(mac, _mac(_key(secret), raw_id)):
        return None
    return int.from_bytes(raw_id, "big")


@dataclass(frozen=True)
class ReturnPath:
    """NEWSLETTER_BOUNCE_ADDRESS split once; `for_delivery` per message."""

    local: str
    domain: str
    secret: str

    @classmethod
    def parse(cls, address: str, secret: str) -> ReturnPath:
        local, _, domain = address.rpartition("@")
        return cls(local, domain.lower(), secret)

    def for_delivery(self, delivery_id: int) -> str:
        return f"{self.local}+{make_tag(self.secret, delivery_id)}@{self.domain}"

    def delivery_of(self, address: str) -> int | None:
        """The delivery an address names, if it is ours (`bounces+<tag>@domain`, any case)."""
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or domain.lower().rstrip(".") != self.domain:
            return None
        base, plus, tag = local.rpartition("+")
        if not plus or base.lower() != self.local.lower() or len(tag) > MAX_TAG:
            return None
        return read_tag(self.secret, tag)
