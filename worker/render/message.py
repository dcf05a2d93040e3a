"""The message itself: multipart/alternative, RFC 8058 headers, optional DKIM.

Built with EmailMessage under policy.SMTP (CRLF), never email.mime or
formataddr. Every header value is checked for control characters before
anything is built; the ones that come from outside are written by `headers`
(never decoded by the email package), and the written header block is checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from functools import cache
from pathlib import Path

import dkim
from email_validator import EmailNotValidError, validate_email

from worker.clock import utcnow
from worker.errors import ConfigError, HeaderInjectionError
from worker.render.digest import check_header_text
from worker.render.headers import DIGEST_FIELDS, check_header_block, mailbox_header, unstructured
from worker.render.personalise import PersonalDigest
from worker.settings import Settings

ONE_CLICK = "List-Unsubscribe=One-Click"
# The headers RFC 8058 and the bulk-sender rules need covered by the signature;
# dkimpy's default list leaves out List-Unsubscribe-Post. A name listed twice is
# oversigned (RFC 6376 5.4.2): it also signs the absence of a second such field, so a
# From, Subject or List-Unsubscribe added in transit breaks the signature.
OVERSIGNED = [b"from", b"subject", b"list-unsubscribe", b"list-unsubscribe-post"]
# Fields we never write, listed in h= all the same: a name listed for a field that is absent
# signs its absence, so a Reply-To, Cc or Sender added in transit (a reply-to hijack, a copy
# to someone else, a "sent on behalf of" line) breaks the signature too.
ABSENT = [b"reply-to", b"cc", b"sender"]
DKIM_HEADERS = [
    *OVERSIGNED, *OVERSIGNED,
    b"to", b"date", b"message-id", b"list-id", b"mime-version", b"content-type", *ABSENT,
]


@dataclass(frozen=True)
class Envelope:
    """Per-message header values, checked before use."""

    sender: Address
    recipient_email: str
    recipient_name: str | None
    message_id: str
    list_id: str
    unsubscribe_url: str
    unsubscribe_mailto: str = ""
    date: datetime | None = None
    subject_prefix: str = ""


def mailbox(email: str, name: str | None) -> Address:
    """An Address with an ASCII (IDNA) domain; the local part stays Unicode only when it
    must, and then the message needs SMTPUTF8 (see `needs_smtputf8`)."""
    check_header_text("recipient address", email)
    if name:
        check_header_text("recipient name", name)
    local, at, domain = email.rpartition("@")
    if email.isascii() and at and local and domain and "@" not in local and '"' not in local:
        # Stored addresses were validated and normalised at import; ASCII ones need no more.
        return Address(display_name=name or "", username=local, domain=domain)
    try:
        checked = validate_email(email, check_deliverability=False)
    except EmailNotValidError as exc:
        raise HeaderInjectionError(f"invalid recipient address {email[:80]!r}: {exc}") from None
    addr = checked.ascii_email or checked.normalized
    local, _, domain = addr.rpartition("@")
    return Address(display_name=name or "", username=local, domain=domain)


def build_message(digest: PersonalDigest, envelope: Envelope) -> EmailMessage:
    subject = envelope.subject_prefix + digest.subject
    for what, value in (
        ("subject", subject), ("Message-ID", envelope.message_id), ("List-Id", envelope.list_id),
        ("unsubscribe URL", envelope.unsubscribe_url), ("unsubscribe mailto", envelope.unsubscribe_mailto),
        ("recipient name", envelope.recipient_name or ""),
    ):
        check_header_text(what, value)
    # Header folding collapses runs of whitespace anyway; doing it here keeps
    # what we store and what the reader's client shows the same.
    subject = " ".join(subject.split())
    to = mailbox(envelope.recipient_email, " ".join((envelope.recipient_name or "").split()) or None)
    msg = EmailMessage(policy=policy.SMTP)
    # Written by us, stored raw: the email package would decode encoded-words in them (see headers.py).
    _set_raw(msg, mailbox_header("From", envelope.sender))
    _set_raw(msg, mailbox_header("To", to))
    _set_raw(msg, unstructured("Subject", subject))
    msg["Date"] = format_datetime(envelope.date) if envelope.date else _now()
    msg["Message-ID"] = envelope.message_id
    _set_raw(msg, unstructured("List-Id", f"<{envelope.list_id}>"))
    links = [f"<{envelope.unsubscribe_url}>"]
    if envelope.unsubscribe_mailto:
        links.append(f"<mailto:{envelope.unsubscribe_mailto}?subject=unsubscribe>")
    msg["List-Unsubscribe"] = ", ".join(links)
    msg["List-Unsubscribe-Post"] = ONE_CLICK
    # Quoted-printable keeps every line under 998 octets whatever premailer emits,
    # and needs no 8BITMIME from the relay.
    msg.set_content(digest.text, subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(digest.html, subtype="html", charset="utf-8", cte="quoted-printable")
    return msg


def _set_raw(msg: EmailMessage, line: str) -> None:
    # policy.SMTP writes a raw value as it is when its lines fit in 78 characters, which
    # `headers` folds them to; a longer single word is refolded, and checked like the rest.
    name, _, value = line.partition(": ")
    msg.set_raw(name, value.removesuffix("\r\n"))


def _now() -> str:
    return format_datetime(utcnow())


def needs_smtputf8(msg: EmailMessage) -> bool:
    """True when an address has a non-ASCII local part (RFC 6531)."""
    return any(not a.username.isascii() for a in msg["To"].addresses)


def message_bytes(msg: EmailMessage) -> bytes:
    """The message as it goes on the wire, its header block checked (see headers.py)."""
    # An encoded-word is not allowed inside an address, so a Unicode local part
    # is written as raw UTF-8 and the sender must use SMTPUTF8.
    data = msg.as_bytes(policy=policy.SMTPUTF8 if needs_smtputf8(msg) else policy.SMTP)
    check_header_block(data.split(b"\r\n\r\n", 1)[0], DIGEST_FIELDS)
    return data


@cache
def _dkim_key(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"setting NEWSLETTER_DKIM_KEY_FILE: cannot read {path}: {exc.strerror}") from None


def sign(data: bytes, settings: Settings) -> bytes:
    """`data` DKIM-signed when NEWSLETTER_DKIM_SELECTOR, _DOMAIN and _KEY_FILE are all set:
    every mail we send (digests, confirmations) goes through here."""
    if settings.dkim_selector and settings.dkim_domain and settings.dkim_key_file:
        return dkim_sign(data, selector=settings.dkim_selector, domain=settings.dkim_domain,
                         key_file=settings.dkim_key_file)
    return data


def dkim_sign(data: bytes, *, selector: str, domain: str, key_file: str) -> bytes:
    """Prepend a DKIM-Signature (relaxed/relaxed, rsa-sha256) to serialised message bytes."""
    signature = dkim.sign(
        data,
        selector.encode(),
        domain.encode(),
        _dkim_key(key_file),
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=DKIM_HEADERS,
    )
    return signature + data
