"""A mail that came back, read into `Report`s: what happened (permanent, transient,
complaint), to which address, and what names our delivery.

- ARF complaints (RFC 5965, `multipart/report; report-type=feedback-report`) and DSNs
  (RFC 3464, `message/delivery-status`) are read with the standard library's parser: they
  carry the status code and the diagnostic per recipient.
- Anything else (qmail, old Exim, Yahoo's own wording, ...) goes to flufl.bounce
  (Mailman's detectors), which finds the failed addresses without codes.

What names the delivery, strongest first: the VERP tag of the address the report was
sent to (verp.py: signed, so only our own tags count), then our Message-ID quoted in
the report (an HMAC too), then the failed address itself (apply.py matches the last two
to a delivery of ours). The address alone is believed only where no tag could be there:
while VERP is on, a mailed report naming a reader's address and nothing of ours could
have come from anyone. Everything in a report is data: bounded, decoded, never trusted to be well formed.
"""

from __future__ import annotations

import email
import hashlib
import logging
import re
from dataclasses import dataclass, field
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr

from flufl.bounce import _scan

from worker.bounces.verp import ReturnPath, SignupTag
from worker.store.models import BounceKind

log = logging.getLogger(__name__)

# A DSN quoting a whole digest is well under this; a bigger mail is not parsed (and kept).
MAX_REPORT_BYTES = 2 * 1024 * 1024
MAX_DIAGNOSTIC = 500
MAX_ADDRESS = 320
# Headers and report fields looked at, per name: a report with thousands is not ours.
MAX_VALUES = 20
# Where a bounce is delivered, the address it was sent to (our VERP address) shows up here.
ENVELOPE_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To", "Return-Path")
# Feedback types that are a reader's complaint (RFC 5965 3.1); not-spam, auth-failure and
# the like are not.
COMPLAINT_TYPES = frozenset({"abuse", "fraud"})
NOT_THE_MAILBOX = frozenset({"5.2.2", "5.2.3", "5.3.4"})
# Our sender's address refused (bad syntax, bad domain): our side, as x.7.x is.
OUR_SENDER = frozenset({"5.1.7", "5.1.8"})
_ENHANCED = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")
_SMTP_CODE = re.compile(r"^\s*(?:smtp\s*;\s*)?([245]\d\d)\b", re.IGNORECASE)


class UnreadableReport(Exception):
    """The mail cannot be read at all (too big, broken); it is kept for a human."""


@dataclass(frozen=True)
class Report:
    kind: BounceKind
    source: str                   # "dsn", "arf", "ses", "json"
    recipient: str | None         # the address the report is about, lower-cased
    delivery_id: int | None       # from a verified VERP tag
    message_id: str | None        # a Message-ID of ours quoted in the report
    code: str | None              # enhanced status code, "5.1.1"
    smtp_code: int | None
    diagnostic: str | None
    fingerprint: str
    # Whether the address alone may name the delivery: never for mail (anyone can mail us a
    # report naming a reader's address, and a forged complaint would suppress them for
    # good; only we can make a tag or a Message-ID), only for the authenticated inputs.
    address_trusted: bool = True
    # A sign-up's confirmation mail, from a verified tag of that kind (verp.py).
    signup: SignupTag | None = None


@dataclass
class Reading:
    """What a mail said: its reports, or why it said nothing we act on."""

    reports: list[Report] = field(default_factory=list)
    ignored: str | None = None


def read_report(data: bytes, *, return_path: ReturnPath | None, message_id_domain: str,
                envelope_to: tuple[str, ...] = ()) -> Reading:
    if len(data) > MAX_REPORT_BYTES:
        raise UnreadableReport(f"{len(data)} bytes, over the {MAX_REPORT_BYTES} read")
    try:
        msg = email.message_from_bytes(data, policy=compat32)
    except Exception as exc:  # the parser is lenient; this is a broken mail, kept for a human
        raise UnreadableReport(f"cannot parse: {type(exc).__name__}") from None
    ident = _Ident(msg, data, return_path, message_id_domain, envelope_to)
    feedback = _first_part(msg, "message/feedback-report")
    if feedback is not None:
        return _read_arf(msg, feedback, ident)
    statuses = list(_parts(msg, "message/delivery-status"))
    if statuses:
        reading = _read_dsn(statuses, ident)
        if reading.reports or reading.ignored:
            return reading
    return _read_other(msg, ident)


class _Ident:
    """What names the delivery in one mail, found once."""

    def __init__(self, msg: Message, data: bytes, return_path: ReturnPath | None, domain: str,
                 envelope_to: tuple[str, ...]) -> None:
        self.return_path = return_path
        self.report_key = _header(msg, "Message-ID") or hashlib.sha256(data).hexdigest()
        addresses = [*envelope_to, *_addresses(msg, ENVELOPE_HEADERS)]
        self.delivery_id = self.tagged(addresses)
        self.message_id = _our_message_id(msg, domain)
        self.signup = self._signup(addresses)

    def _signup(self, addresses: list[str]) -> SignupTag | None:
        if self.return_path is None:
            return None
        found = (self.return_path.signup_of(a) for a in addresses[:MAX_VALUES * len(ENVELOPE_HEADERS)])
        return next((tag for tag in found if tag is not None), None)

    def tagged(self, addresses: list[str]) -> int | None:
        if self.return_path is None:
            return None
        for address in addresses[:MAX_VALUES * len(ENVELOPE_HEADERS)]:
            found = self.return_path.delivery_of(address)
            if found is not None:
                return found
        return None

    def report(self, kind: BounceKind, source: str, recipient: str | None, *, code: str | None = None,
               smtp_code: int | None = None, diagnostic: str | None = None,
               delivery_id: int | None = None) -> Report:
        return build_report(kind, source, report_key=self.report_key, recipient=recipient,
                            delivery_id=delivery_id if delivery_id is not None else self.delivery_id,
                            message_id=self.message_id, code=code, smtp_code=smtp_code, diagnostic=diagnostic,
                            address_trusted=False, signup=self.signup)


def build_report(kind: BounceKind, source: str, *, report_key: str, recipient: str | None,
                 delivery_id: int | None, message_id: str | None, code: str | None = None,
                 smtp_code: int | None = None, diagnostic: str | None = None,
                 address_trusted: bool = True, signup: SignupTag | None = None) -> Report:
    """A Report with its values bounded and cleaned, and its fingerprint: the report's own
    id (its Message-ID, a provider's event id, else a hash of its content) with the kind
    and the address (or delivery) it is about."""
    recipient = _address(recipient)
    key = "\x00".join((source, report_key[:1000], kind.value, recipient or str(delivery_id)))
    found = _ENHANCED.search(code or "")
    return Report(kind=kind, source=source, recipient=recipient, delivery_id=delivery_id,
                  message_id=message_id, code=".".join(found.groups()) if found else None, smtp_code=smtp_code,
                  diagnostic=_clean(diagnostic), fingerprint=hashlib.sha256(key.encode()).hexdigest(),
                  address_trusted=address_trusted, signup=signup)


def _read_arf(msg: Message, feedback: Message, ident: _Ident) -> Reading:
    fields = _fields(feedback)
    kind = (fields.get("feedback-type") or "").strip().lower()
    if kind not in COMPLAINT_TYPES:
        return Reading(ignored=f"feedback report of type {kind[:40] or 'none'!r}: not a complaint")
    original = _original_headers(msg)
    delivery_id = ident.delivery_id
    if delivery_id is None:
        # The complaint is mailed to the FBL address, not to the VERP one: the original
        # envelope sender is in the report, or in the quoted message's Return-Path.
        quoted = [fields.get("original-mail-from", "")]
        if original is not None:
            quoted += _addresses(original, ("Return-Path",))
        delivery_id = ident.tagged(quoted)
    recipient = fields.get("original-rcpt-to") or fields.get("removal-recipient")
    if not recipient and original is not None:
        recipient = original.get("To")
    return Reading([ident.report(BounceKind.COMPLAINT, "arf", recipient, diagnostic=f"feedback-type: {kind}",
                                 delivery_id=delivery_id)])


def _read_dsn(statuses: list[Message], ident: _Ident) -> Reading:
    reports: list[Report] = []
    not_failed: set[str] = set()
    for part in statuses:
        for block in _blocks(part)[1:MAX_VALUES + 1]:  # the first block is the message's own fields
            action = (block.get("action") or "").strip().lower()
            recipient = _after_type(block.get("final-recipient") or block.get("original-recipient"))
            diagnostic = _after_type(block.get("diagnostic-code"))
            code = _enhanced(block.get("status"), diagnostic)
            if action != "failed":
                not_failed.add(action or "no action")
                continue
            match = _SMTP_CODE.match(diagnostic or "")
            reports.append(ident.report(kind_of(code), "dsn", recipient, code=code,
                                        smtp_code=int(match[1]) if match else None, diagnostic=diagnostic))
    if reports:
        return Reading(reports)
    if not_failed:
        # "delayed": still being tried; "delivered", "relayed", "expanded": not a failure.
        return Reading(ignored=f"delivery status {', '.join(sorted(not_failed))[:80]}: not a failure")
    return Reading()


def _read_other(msg: Message, ident: _Ident) -> Reading:
    temporary, permanent = _all_failures(msg)
    reports = [ident.report(BounceKind.PERMANENT, "dsn", a.decode("ascii", "replace"),
                            diagnostic=_header(msg, "Subject"))
               for a in sorted(permanent)[:MAX_VALUES]]
    if reports:
        return Reading(reports)
    if temporary:
        # Outside RFC 3464, a temporary failure is a warning that delivery is still tried.
        return Reading(ignored="a delay warning: still being tried")
    return Reading(ignored="not a bounce or complaint (an auto-reply, or nothing we can read)")


def _all_failures(msg: Message) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """flufl.bounce's `all_failures`, except that a detector that raises is skipped, not
    the end of the scan: `all_failures` re-raises the first error (in 6.0.0 the Yale
    detector raises IndexError on a mail without a From), and a heuristic tripping over
    one hostile mail must not hide what the next detector finds. Relies on flufl.bounce
    6.0's `_scan._DETECTORS` (checked by tests/test_bounces_samples.py)."""
    for detector in _scan._DETECTORS:
        try:
            temporary, permanent = detector().process(msg)
        except Exception as exc:  # noqa: BLE001 - a heuristic over hostile text
            log.debug("flufl.bounce detector %s failed: %s", detector.__name__, type(exc).__name__)
            continue
        if temporary or permanent:
            return frozenset(temporary), frozenset(permanent)
    return frozenset(), frozenset()


def kind_of(code: str | None) -> BounceKind:
    """Failed, by its status: the mailbox or domain is gone (5.1.x, 5.2.1, 5.4.4, other
    5.x.x, or no code at all): permanent. A policy or authentication refusal (x.7.x: our
    content, reputation, SPF, DKIM or DMARC) or our sender refused (5.1.7, 5.1.8): our
    side, never the reader's (as at RCPT, where it pauses the edition). A full mailbox
    (5.2.2), a message too big (5.2.3, 5.3.4) and every other 4.x.x the relay gave up on:
    transient, counted (apply.py)."""
    if code is None:
        return BounceKind.PERMANENT
    if code[2:4] == "7." or code in OUR_SENDER:
        return BounceKind.SENDER
    if code.startswith("4.") or code in NOT_THE_MAILBOX:
        return BounceKind.TRANSIENT
    return BounceKind.PERMANENT


def _enhanced(status: str | None, diagnostic: str | None) -> str | None:
    """The Status field's code; where it says only x.0.0 (Exim does), the diagnostic's."""
    found = _ENHANCED.search(status or "")
    code = ".".join(found.groups()) if found else None
    if code is None or code.endswith(".0.0"):
        better = _ENHANCED.search(diagnostic or "")
        if better and (code is None or better[1] == code[0]):
            return ".".join(better.groups())
    return code


def _parts(msg: Message, content_type: str):
    for part in msg.walk():
        if part.get_content_type() == content_type:
            yield part


def _first_part(msg: Message, content_type: str) -> Message | None:
    return next(_parts(msg, content_type), None)


def _blocks(part: Message) -> list[Message]:
    """A delivery-status part's header blocks, however the parser left them."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [p for p in payload if isinstance(p, Message)]
    text = payload if isinstance(payload, str) else ""
    return [HeaderParser(policy=compat32).parsestr(b.strip() + "\n") for b in re.split(r"\n\s*\n", text) if b.strip()]


def _fields(part: Message) -> dict[str, str]:
    """A feedback report's fields, lower-cased names (the first of each)."""
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], Message):
        source = payload[0]
    else:
        source = HeaderParser(policy=compat32).parsestr(payload if isinstance(payload, str) else "")
    found: dict[str, str] = {}
    for name, value in source.items()[:MAX_VALUES * 5]:
        found.setdefault(name.lower(), str(value))
    return found


def _original_headers(msg: Message) -> Message | None:
    """The returned message's headers (message/rfc822 or text/rfc822-headers), if quoted."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif kind == "text/rfc822-headers":
            text = part.get_payload(decode=True) or b""
            return HeaderParser(policy=compat32).parsestr(text[:256 * 1024].decode("utf-8", "replace"))
    return None


def _our_message_id(msg: Message, domain: str) -> str | None:
    """Our Message-ID (worker/tokens.py: 40 hex digits at the sender's domain), wherever the
    report quotes it: in the returned headers, or in text that mangled them."""
    if not domain:
        return None
    pattern = re.compile(r"<([0-9a-f]{40}@" + re.escape(domain) + r")>", re.IGNORECASE)
    original = _original_headers(msg)
    if original is not None:
        found = pattern.search(str(original.get("Message-ID", ""))[:1000])
        if found:
            return f"<{found[1].lower()}>"
    for part in msg.walk():
        if part.is_multipart() or part.get_content_maintype() not in ("text", "message"):
            continue
        raw = part.get_payload(decode=True)
        if isinstance(raw, bytes):
            found = pattern.search(raw[:512 * 1024].decode("utf-8", "replace"))
            if found:
                return f"<{found[1].lower()}>"
    return None


def _addresses(msg: Message, names: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for name in names:
        values += [str(v)[:1000] for v in (msg.get_all(name) or [])[:MAX_VALUES]]
    return [a for _, a in getaddresses(values) if a]


def _header(msg: Message, name: str) -> str | None:
    value = msg.get(name)
    return " ".join(str(value).split())[:MAX_DIAGNOSTIC] if value else None


def _after_type(value: str | None) -> str | None:
    """'rfc822; a@example.org' -> 'a@example.org'; 'smtp; 550 ...' -> '550 ...'."""
    if not value:
        return None
    text = " ".join(str(value).split())
    kind, semicolon, rest = text.partition(";")
    return rest.strip() if semicolon and len(kind) < 20 else text


def _address(value: str | None) -> str | None:
    if not value:
        return None
    address = parseaddr(" ".join(str(value).split())[:1000])[1].strip().lower()
    if "@" not in address or len(address) > MAX_ADDRESS or any(c.isspace() or ord(c) < 32 for c in address):
        return None
    return address


def _clean(text: str | None) -> str | None:
    if not text:
        return None
    return "".join(c if c.isprintable() else " " for c in " ".join(text.split()))[:MAX_DIAGNOSTIC] or None
