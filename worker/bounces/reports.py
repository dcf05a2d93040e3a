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
import json
import logging
import re
from dataclasses import dataclass, field, replace
from email.message import Message
from email.parser import HeaderParser
from email.policy import compat32
from email.utils import getaddresses, parseaddr

from flufl.bounce import _scan

from worker.bounces.reasons import ENHANCED, Reason, by_code, by_text, find_code, kind_of_reason, reason_of
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
# MIME parts looked at in one report: a DSN has three or four; tens of thousands of tiny
# parts (each a boundary line) cost seconds of parsing, so such a mail is not parsed.
MAX_PARTS = 200
# The human-readable text of a bounce read for its reason (the quoted original is cut off).
MAX_TEXT = 16 * 1024
MAX_SCAN = 128 * 1024
DSN_TYPES = ("message/delivery-status", "message/xdelivery-status", "message/global-delivery-status")
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
    reason: str | None = None     # worker/bounces/reasons.py
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
    # Every MIME part starts with a boundary line: counting them bounds the parse.
    if data.count(b"\n--") > MAX_PARTS * 2:
        raise UnreadableReport(f"over {MAX_PARTS} MIME parts")
    try:
        msg = email.message_from_bytes(data, policy=compat32)
    except Exception as exc:  # the parser is lenient; this is a broken mail, kept for a human
        raise UnreadableReport(f"cannot parse: {type(exc).__name__}") from None
    ident = _Ident(msg, data, return_path, message_id_domain, envelope_to)
    feedback = _first_part(msg, "message/feedback-report")
    if feedback is not None:
        return _read_arf(msg, feedback, ident)
    original = _original_headers(msg)
    if original is not None and original.get("X-HmXmrOriginalRecipient"):
        # Microsoft's JMRP: no feedback part, the complained-of message with this header.
        return Reading([ident.report(BounceKind.COMPLAINT, "arf", str(original["X-HmXmrOriginalRecipient"]),
                                     diagnostic="feedback-type: abuse (jmrp)", reason=Reason.FEEDBACK.value)])
    statuses = [p for p in _walk(msg) if p.get_content_type() in DSN_TYPES]
    if statuses:
        reading = _read_dsn(statuses, ident, _bounce_text(msg))
        if reading.reports or reading.ignored:
            return reading
    return _read_other(msg, ident, data)


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

    @property
    def ours(self) -> bool:
        return self.delivery_id is not None or self.message_id is not None or self.signup is not None

    def report(self, kind: BounceKind, source: str, recipient: str | None, *, code: str | None = None,
               smtp_code: int | None = None, diagnostic: str | None = None,
               delivery_id: int | None = None, reason: str | None = None) -> Report:
        return build_report(kind, source, report_key=self.report_key, recipient=recipient,
                            delivery_id=delivery_id if delivery_id is not None else self.delivery_id,
                            message_id=self.message_id, code=code, smtp_code=smtp_code, diagnostic=diagnostic,
                            address_trusted=False, signup=self.signup, reason=reason)


def build_report(kind: BounceKind, source: str, *, report_key: str, recipient: str | None,
                 delivery_id: int | None, message_id: str | None, code: str | None = None,
                 smtp_code: int | None = None, diagnostic: str | None = None,
                 address_trusted: bool = True, signup: SignupTag | None = None,
                 reason: str | None = None) -> Report:
    """A Report with its values bounded and cleaned, and its fingerprint: the report's own
    id (its Message-ID, a provider's event id, else a hash of its content) with the kind
    and the address (or delivery) it is about."""
    recipient = _address(recipient)
    key = "\x00".join((source, report_key[:1000], kind.value, recipient or str(delivery_id)))
    found = ENHANCED.search(code or "")
    return Report(kind=kind, source=source, recipient=recipient, delivery_id=delivery_id,
                  message_id=message_id, code=".".join(found.groups()) if found else None, smtp_code=smtp_code,
                  diagnostic=_clean(diagnostic), fingerprint=hashlib.sha256(key.encode()).hexdigest(),
                  address_trusted=address_trusted, signup=signup, reason=reason)


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
        recipient = _header(original, "To")
    return Reading([ident.report(BounceKind.COMPLAINT, "arf", recipient, diagnostic=f"feedback-type: {kind}",
                                 delivery_id=delivery_id, reason=Reason.FEEDBACK.value)])


def _read_dsn(statuses: list[Message], ident: _Ident, text: str) -> Reading:
    reports: list[Report] = []
    not_failed: set[str] = set()
    for part in statuses:
        # Per-recipient blocks, whichever block is missing (some MTAs leave out the first).
        blocks = [b for b in _blocks(part) if b.get("final-recipient") or b.get("original-recipient")
                  or b.get("action")]
        for block in blocks[:MAX_VALUES]:
            # Through _header: a field with 8-bit bytes is an email.header.Header, not a str.
            action = (_header(block, "action") or "").lower()
            recipient = _recipient(block)
            diagnostic = _after_type(_header(block, "diagnostic-code"))
            code = _enhanced(_header(block, "status"), diagnostic)
            if action == "expired":
                action = "failed"  # given up: not standard (RFC 3464 says failed), but final
            if action and action != "failed" or not action and (code or "5")[0] not in "45":
                not_failed.add(action or "no action")
                continue
            about = _paragraph(text, recipient) if recipient and not diagnostic else ""
            if about:
                # No Diagnostic-Code: the human-readable part says why, per recipient.
                code = code if code and not code.endswith(".0") else find_code(about) or code
                diagnostic = _line_of(about, code) or " ".join(about.split())[:MAX_DIAGNOSTIC]
            reports.append(_failure(ident, "dsn", recipient, code, diagnostic, about, text))
    if reports:
        return Reading(reports)
    if not_failed:
        # "delayed": still being tried; "delivered", "relayed", "expanded": not a failure.
        return Reading(ignored=f"delivery status {', '.join(sorted(not_failed))[:80]}: not a failure")
    return Reading()


def _failure(ident: _Ident, source: str, recipient: str | None, code: str | None, diagnostic: str | None,
             *texts: str | None) -> Report:
    """One failed recipient: its reason from the diagnostic, the code, then the report's words."""
    relayed = _SES_WORDS.match(diagnostic or "")
    if relayed:
        # SES: "5.1.0 - Unknown address error 550-'<the receiving server's words>'": theirs say why.
        code = find_code(relayed[1]) or code
        texts = (relayed[1], *texts)
    reason = reason_of(code, diagnostic if not relayed else relayed[1], *texts)
    match = _SMTP_CODE.match(diagnostic or "") or _SMTP_REPLY.search(diagnostic or "")
    if reason is Reason.UNDEFINED and match:
        reason = REPLY_REASONS.get(int(match[1]), reason)
    text = next((t for t in texts if t), None)  # the words about this recipient
    if reason is Reason.USER_UNKNOWN and by_code(code) is not Reason.USER_UNKNOWN \
            and _AFTER_DATA.search(f"{diagnostic} {text}"):
        # Refused once the message was seen, the address having been accepted: a filter's verdict.
        reason = Reason.FILTERED
    kind = kind_of_reason(reason, code)
    if kind is BounceKind.REVIEW and code is not None and code.startswith("4."):
        kind = BounceKind.TRANSIENT  # a temporary failure the relay gave up on
    return ident.report(kind or BounceKind.REVIEW, source, recipient, code=code,
                        smtp_code=int(match[1]) if match else None, diagnostic=diagnostic or _line_of(text, code),
                        reason=reason.value)


def _read_other(msg: Message, ident: _Ident, data: bytes) -> Reading:
    text = _bounce_text(msg)
    if _is_auto_reply(msg, text):
        return Reading(ignored="an auto-reply")
    ses = _ses_notification(msg)
    if ses is not None:
        from worker.bounces.providers import BadEvent, read_ses

        try:
            reading = read_ses(ses, return_path=ident.return_path, sns_id=ident.report_key, address_trusted=False)
        except BadEvent as exc:
            return Reading(ignored=str(exc))
        reading.reports = [replace(r, delivery_id=r.delivery_id if r.delivery_id is not None else ident.delivery_id,
                                   message_id=r.message_id or ident.message_id) for r in reading.reports]
        return reading
    # flufl.bounce's detectors run regular expressions over every line: over the report's
    # head only (its own words come first; the returned message, if any, after them).
    head = msg if len(data) <= MAX_SCAN else email.message_from_bytes(data[:MAX_SCAN], policy=compat32)
    temporary, permanent = _all_failures(head)
    code = find_code(text)
    reason = reason_of(code, text)
    if reason is Reason.UNDEFINED and temporary and not permanent or _DELAYED.search(text) and not permanent:
        # Outside RFC 3464, a temporary failure is a warning that delivery is still tried.
        return Reading(ignored="a delay warning: still being tried")
    addresses = sorted({a.decode("ascii", "replace").lower() for a in permanent | temporary}
                       | {(a or b).lower() for a, b in _TRANSCRIPT.findall(text)})[:MAX_VALUES]
    if not addresses and reason is Reason.UNDEFINED and _auto_submitted(msg):
        return Reading(ignored="an auto-reply")
    if not addresses and not ident.ours:
        return Reading(ignored="not a bounce or complaint (an auto-reply, or nothing we can read)")
    return Reading([_plain_failure(ident, address, text, msg, alone=len(addresses) == 1) for address in addresses]
                   if addresses else [_plain_failure(ident, None, text, msg)])


def _plain_failure(ident: _Ident, address: str | None, text: str, msg: Message, *, alone: bool = True) -> Report:
    """A failure in a bounce without a DSN part: its words are the paragraph naming the
    address (a bounce for several readers says why for each), else the whole text."""
    about = _paragraph(text, address) if address else ""
    code = find_code(about) or (find_code(text) if alone or not about else None)
    diagnostic = _line_of(about, code) or (" ".join(about.split()) if about else None) or _line_of(text, code) \
        or _header(msg, "Subject")
    return _failure(ident, "dsn", address, code, diagnostic, about, text)


def _paragraph(text: str, address: str) -> str:
    """The lines from the one naming the address to the next blank line or next address."""
    lines = text.splitlines()
    low = address.lower()
    for number, line in enumerate(lines):
        if low in line.lower():
            found = [line]
            for following in lines[number + 1:number + 12]:
                if not following.strip() and len(found) > 1 or "@" in following and low not in following.lower():
                    break
                found.append(following)
            return "\n".join(found)
    return ""


def _recipient(block: Message) -> str | None:
    """Final-Recipient, or Original-Recipient where the final one is no address
    ("LOCAL;", "system;<>", a source route)."""
    for name in ("final-recipient", "original-recipient", "x-actual-recipient"):
        found = _address(_after_type(_header(block, name)))
        if found:
            return found
    return None


_QUOTED = re.compile(
    r"^(?:\s*-{2,}.*(?:original|copy|returned|headers|below this line|undelivered).*"
    r"|(?:return-path|received|message-id|dkim-signature|x-[\w-]+): .*"
    r"|.*(?:original message follows|this is a copy of the message|copy of the message|message header follows"
    r"|below this line is a copy|original message header|the header of the original).*)$",
    re.IGNORECASE | re.MULTILINE)
_DELAYED = re.compile(r"will (?:continue|keep) (?:to try|trying)|will be retried|only a temporary failure report"
                      r"|still (?:being )?(?:trying|tried|retried)"
                      r"|has not yet been delivered|this is (?:only )?a warning|no action is required"
                      r"|delivery (?:has been )?delayed", re.IGNORECASE)
_AFTER_DATA = re.compile(r"end of data|after data|>>> data\b|data command|in reply to data", re.IGNORECASE)
# RFC 5321's replies that say what failed without an enhanced code: a command we sent
# was refused (our side), the mailbox over its storage (transient).
REPLY_REASONS = {500: Reason.SYNTAX_ERROR, 501: Reason.SYNTAX_ERROR, 502: Reason.SYNTAX_ERROR,
                 503: Reason.SYNTAX_ERROR, 504: Reason.SYNTAX_ERROR, 552: Reason.MAILBOX_FULL}
# Sendmail's transcript: "550 <reader@example.org>... User unknown", one line per address.
# qmail, Postfix and OpenSMTPD: "<reader@example.org>: ..." or "reader@example.org: 550 ...".
_TRANSCRIPT = re.compile(r"^(?:\d{3}[ -]<([^<>\s@]{1,64}@[^<>\s]{1,255})>\.\.\."
                         r"|<?([^<>\s@:]{1,64}@[^<>\s:]{1,255}?)>?:(?:\s|$))", re.MULTILINE)
_SES_WORDS = re.compile(r"^\d\.\d{1,3}\.\d{1,3} - [^']{0,80}'(.{1,500})'")
_SMTP_REPLY = re.compile(r"(?<![\d.])([45]\d\d)(?:[ -]|$)")
_AUTO_SUBJECT = re.compile(r"^(?:auto(?:matic)?[ -]?(?:reply|response)|out of (?:the )?office|vacation|absence)",
                           re.IGNORECASE)


def _bounce_text(msg: Message) -> str:
    """The report's own words (its first text part outside the returned message), bounded,
    without the quoted original."""
    for part in _walk(msg):
        if part.get_content_type() == "message/rfc822":
            break
        if part.get_content_maintype() == "text" and part.get_content_subtype() in ("plain", "html"):
            raw = part.get_payload(decode=True)
            if not isinstance(raw, bytes) or not raw.strip():
                continue
            charset = part.get_content_charset() or "utf-8"
            try:
                text = raw[:MAX_TEXT].decode(charset, "replace")
            except LookupError:
                text = raw[:MAX_TEXT].decode("utf-8", "replace")
            if part.get_content_subtype() == "html":
                text = re.sub(r"<[^>]{0,500}>", " ", text)
            return _cut(text)
    # A multipart whose boundaries the parser did not find: its text as it is.
    for part in _walk(msg):
        payload = part.get_payload()
        if part.is_multipart() is False and part.get_content_maintype() == "multipart" and isinstance(payload, str):
            return _cut(payload[:MAX_TEXT])
    return ""


def _cut(text: str) -> str:
    cut = _QUOTED.search(text)
    return text[:cut.start()] if cut and cut.start() > 0 else text


def _line_of(text: str | None, code: str | None) -> str | None:
    """The line of the report's words with the status code (or an SMTP reply), as its diagnostic."""
    if not text:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if code and code in line or _SMTP_REPLY.match(line):
            return line
    return None


def _is_auto_reply(msg: Message, text: str) -> bool:
    """The headers vacation programs set, their subjects, or their words. (RFC 3834's
    Auto-Submitted: auto-replied alone is no sign: Exim and Google put it on bounces too.)"""
    if msg.get("X-Autoreply") or msg.get("X-Autorespond"):
        return True
    return bool(_AUTO_SUBJECT.match(_header(msg, "Subject") or "")) or by_text(text) is Reason.VACATION


def _auto_submitted(msg: Message) -> bool:
    return (_header(msg, "Auto-Submitted") or "").lower().startswith("auto-replied")


def _ses_notification(msg: Message) -> dict | None:
    """An Amazon SES notification mailed as JSON text (an SNS e-mail subscription)."""
    if msg.is_multipart() or msg.get_content_type() != "text/plain":
        return None
    raw = msg.get_payload(decode=True)
    text = raw[:256 * 1024].decode("utf-8", "replace").lstrip() if isinstance(raw, bytes) else ""
    # Mailed notifications break long lines with "!" and a space (RFC 5322's 998 limit).
    text = re.sub(r"!\r?\n ", "", text)
    if not text.startswith("{") or not re.search(r"notificationType|eventType", text[:4000]):
        return None
    try:
        found, _ = json.JSONDecoder().raw_decode(text)
        if isinstance(found, dict) and found.get("Type") == "Notification" and isinstance(found.get("Message"), str):
            found = json.loads(found["Message"][:256 * 1024])  # the SNS envelope around it
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


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


def _enhanced(status: str | None, diagnostic: str | None) -> str | None:
    """The Status field's code; where it says only x.0.0 (Exim does), the diagnostic's."""
    code = find_code(status)
    if code is None or code.endswith(".0"):
        better = find_code(diagnostic)
        if better and (code is None or better[0] == code[0]):
            return better
    return code


def _walk(msg: Message):
    """msg.walk(), at most MAX_PARTS parts."""
    for number, part in enumerate(msg.walk()):
        if number >= MAX_PARTS:
            return
        yield part


def _parts(msg: Message, content_type: str):
    for part in _walk(msg):
        if part.get_content_type() == content_type:
            yield part


def _first_part(msg: Message, content_type: str) -> Message | None:
    return next(_parts(msg, content_type), None)


def _blocks(part: Message) -> list[Message]:
    """A delivery-status part's header blocks, however the parser left them."""
    payload = part.get_payload()
    if isinstance(payload, list):
        found: list[Message] = []
        for block in (p for p in payload[:MAX_VALUES + 1] if isinstance(p, Message)):
            found.append(block)
            # Parsed as a message (message/xdelivery-status): the first block its headers, the rest its body.
            if isinstance(block.get_payload(), str):
                found += _split_blocks(block.get_payload())
        return found
    return _split_blocks(payload if isinstance(payload, str) else "")


def _split_blocks(text: str) -> list[Message]:
    return [HeaderParser(policy=compat32).parsestr(b.strip() + "\n")
            for b in re.split(r"\n\s*\n", text[:64 * 1024])[:MAX_VALUES + 1] if b.strip()]


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
    for part in _walk(msg):
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
    for part in _walk(msg):
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
