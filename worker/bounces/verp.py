"""VERP: the envelope sender (MAIL FROM) of each message names its delivery, so a bounce,
which goes to that address, says which delivery failed even when its body says nothing
useful. `bounces@bounce.example.org` becomes `bounces+<tag>@bounce.example.org`.

The tag is the delivery id's bytes and a MAC, in lower-case hex: relays may change the
case of a local part, and hex means the same in either case. (base32 would be four
characters shorter, but CPython's b32encode is written in Python and cost 1.9 us of the
2.6 per message, where bytes.hex is C.) The MAC (keyed BLAKE2b, 64 bits, a salt of its
own) makes a forged report for someone else's delivery worthless: guessing one means
mailing us about 2**63 times. It runs once per message on the hot path: one copy of a
keyed hash state, one update, one hex.

A sign-up's confirmation mail has a tag of its own kind: `s` (never a hex digit, so it is
never read as a delivery's) before the subscriber id, four bytes naming the link's nonce
and a MAC under another personalisation, so that neither kind of tag can stand for the
other. A bounce of it ends that sign-up (apply.py), and only while that link is the live one.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from dataclasses import dataclass

VERP_SALT = b"newsletter.verp.v1"
MAC_BYTES = 8
# A delivery id fits 8 bytes; with the MAC, 9 to 16 bytes: 18 to 32 hex digits.
MAX_TAG = 32
_TAG = re.compile(r"(?:[0-9a-f]{2}){9,16}")
SIGNUP_KIND = "s"
NONCE_REF_BYTES = 4
# Subscriber id (1 to 8 bytes), nonce reference and MAC: 13 to 20 bytes.
_SIGNUP_TAG = re.compile(SIGNUP_KIND + r"(?:[0-9a-f]{2}){13,20}")


@functools.lru_cache(maxsize=8)
def _keyed(secret: str, person: bytes = b"verp"):
    # BLAKE2b takes a key of at most 64 bytes; the secret key may be longer. The keyed state
    # is made once per key and copied per message.
    key = hashlib.sha256(VERP_SALT + b"\x00" + secret.encode()).digest()
    return hashlib.blake2b(key=key, digest_size=MAC_BYTES, person=person)


def _mac(secret: str, raw_id: bytes, person: bytes = b"verp") -> bytes:
    state = _keyed(secret, person).copy()
    state.update(raw_id)
    return state.digest()


def make_tag(secret: str, delivery_id: int) -> str:
    raw_id = delivery_id.to_bytes((delivery_id.bit_length() + 7) // 8 or 1, "big")
    return (raw_id + _mac(secret, raw_id)).hex()


def read_tag(secret: str, tag: str) -> int | None:
    """The delivery id, or None for anything we did not make (any case)."""
    tag = tag.lower()
    if not _TAG.fullmatch(tag):
        return None
    raw = bytes.fromhex(tag)
    raw_id, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, raw_id)):
        return None
    return int.from_bytes(raw_id, "big")


@dataclass(frozen=True)
class SignupTag:
    """What a confirmation mail's return path names: the sign-up, and which of its links."""

    subscriber_id: int
    nonce_ref: bytes

    def names(self, nonce: str | None) -> bool:
        """True when `nonce` is the link this tag was made for."""
        return nonce is not None and hmac.compare_digest(self.nonce_ref, nonce_ref(nonce))


def nonce_ref(nonce: str) -> bytes:
    return hashlib.blake2b(nonce.encode(), digest_size=NONCE_REF_BYTES, person=b"signup-nonce").digest()


def make_signup_tag(secret: str, subscriber_id: int, nonce: str) -> str:
    raw = subscriber_id.to_bytes((subscriber_id.bit_length() + 7) // 8 or 1, "big") + nonce_ref(nonce)
    return SIGNUP_KIND + (raw + _mac(secret, raw, b"verp-signup")).hex()


def read_signup_tag(secret: str, tag: str) -> SignupTag | None:
    """The sign-up a tag names, or None for anything we did not make as one (any case)."""
    tag = tag.lower()
    if not _SIGNUP_TAG.fullmatch(tag):
        return None
    raw = bytes.fromhex(tag[len(SIGNUP_KIND):])
    payload, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
    if not hmac.compare_digest(mac, _mac(secret, payload, b"verp-signup")):
        return None
    return SignupTag(int.from_bytes(payload[:-NONCE_REF_BYTES], "big"), payload[-NONCE_REF_BYTES:])


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

    def for_signup(self, subscriber_id: int, nonce: str) -> str:
        return f"{self.local}+{make_signup_tag(self.secret, subscriber_id, nonce)}@{self.domain}"

    def delivery_of(self, address: str) -> int | None:
        """The delivery an address names, if it is ours (`bounces+<tag>@domain`, any case)."""
        tag = self._tag_of(address)
        if tag is None or len(tag) > MAX_TAG:
            return None
        return read_tag(self.secret, tag)

    def signup_of(self, address: str) -> SignupTag | None:
        """The sign-up a confirmation mail's return path names, if it is ours."""
        tag = self._tag_of(address)
        return read_signup_tag(self.secret, tag) if tag is not None else None

    def _tag_of(self, address: str) -> str | None:
        local, at, domain = address.strip().strip("<>").rpartition("@")
        if not at or domain.lower().rstrip(".") != self.domain:
            return None
        base, plus, tag = local.rpartition("+")
        if not plus or base.lower() != self.local.lower():
            return None
        return tag
