"""Reports a relay posts instead of mailing: our generic JSON event, and Amazon SES's
notifications through SNS (docs/bounces.md has both shapes).

SNS signs each message (SignatureVersion 1: RSA with SHA-1, 2: with SHA-256) with a key
whose certificate it serves at SigningCertURL; the URL must be SNS's certificate name on
the `sns.<region>.amazonaws.com` host of the topic's region, and fetching it is the only
outbound request here. It
is made only for a message from the configured topic and of the last hour, over the
feeds' hardened fetch (public addresses, deadline, size cap after decoding), and its
result, a failure too, is kept a while (CertificateCache): posting many messages costs
few fetches. Whoever could post a forged event still needs that key.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker.bounces.reasons import ENHANCED, Reason, kind_of_reason, reason_of
from worker.bounces.reports import Reading, build_report
from worker.bounces.verp import ReturnPath, read_tag
from worker.ingest.decoding import ACCEPT_ENCODING, read_body
from worker.ingest.network import GuardedTransport
from worker.store.models import BounceKind

log = logging.getLogger(__name__)

MAX_EVENTS = 100
MAX_RECIPIENTS = 50
MAX_CERTIFICATE = 16 * 1024
# One certificate fetch: SNS answers in well under a second; the web worker waiting on it
# is not kept longer than this whatever the peer does.
CERTIFICATE_TIMEOUT = 10.0
# SNS keeps a signing certificate for months. An hour bounds how long a certificate stays
# believed after it changed; a failure (unreachable, not found, too large) is kept a minute,
# so a flood of posts naming one URL costs a fetch a minute and SNS's own retries still get through.
CERTIFICATE_TTL = 3600.0
CERTIFICATE_FAILURE_TTL = 60.0
# URLs remembered at once: SNS uses one certificate per region at a time.
MAX_CERTIFICATES = 16
# SNS delivers within seconds and retries for minutes; a message signed longer ago than
# this is a replay. A few minutes ahead allows for our clock being behind.
MAX_MESSAGE_AGE = timedelta(hours=1)
MAX_CLOCK_AHEAD = timedelta(minutes=5)
# A region's name, not any label: `sns.s3.amazonaws.com` or `sns.s3-website-us-east-1...`
# would be an S3 bucket called "sns", whose owner could serve a certificate of their own.
SNS_HOST = re.compile(r"sns\.(?P<region>[a-z]{2}(-[a-z]+)+-\d{1,2})\.amazonaws\.com(\.cn)?")
# The name SNS gives its signing certificates.
SNS_CERTIFICATE_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]{32}\.pem")
# The fields each message type signs, in this order (AWS: "Verifying the signatures of
# Amazon SNS messages"); Subject only when present.
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
HASHES = {"1": hashes.SHA1, "2": hashes.SHA256}

CertificateFetcher = Callable[[str], bytes]


class BadEvent(ValueError):
    """The event is refused; the message says why (it is shown to the poster)."""


# -- our generic JSON --------------------------------------------------------------------

class GenericEvent(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    type: Literal["bounce", "complaint"]
    bounce_type: Literal["permanent", "transient"] = "permanent"
    recipient: str | None = Field(None, max_length=320)
    # Our VERP address (or just its tag), or our Message-ID.
    delivery: str | None = Field(None, max_length=400)
    code: str | None = Field(None, max_length=16)
    diagnostic: str | None = Field(None, max_length=2000)
    # The provider's id of this event: the same id twice is the same report.
    id: str | None = Field(None, max_length=200)

    @field_validator("code")
    @classmethod
    def _enhanced_code(cls, value: str | None) -> str | None:
        if value and not ENHANCED.fullmatch(value):
            raise ValueError("not an enhanced status code (class.subject.detail, such as 5.1.1)")
        return value or None


def read_generic(body: Any, *, return_path: ReturnPath | None, secret: str) -> list[Reading | BadEvent]:
    """One result per event posted (an object, or a list of up to MAX_EVENTS)."""
    items = body if isinstance(body, list) else [body]
    if len(items) > MAX_EVENTS:
        raise BadEvent(f"{len(items)} events in one post; at most {MAX_EVENTS}")
    return [_one_generic(item, return_path, secret) for item in items]


def _one_generic(item: Any, return_path: ReturnPath | None, secret: str) -> Reading | BadEvent:
    try:
        event = GenericEvent.model_validate(item)
    except ValidationError as exc:
        err = exc.errors()[0]
        return BadEvent(f"{'.'.join(map(str, err['loc'])) or 'event'}: {err['msg']}")
    if not event.recipient and not event.delivery:
        return BadEvent("an event needs a recipient or a delivery")
    delivery_id, message_id = _delivery_ref(event.delivery, return_path, secret)
    if event.delivery and delivery_id is None and message_id is None:
        return BadEvent("delivery: not a tag, bounce address or Message-ID of ours")
    reason = Reason.FEEDBACK
    if event.type == "complaint":
        kind = BounceKind.COMPLAINT
    else:
        kind = BounceKind.PERMANENT if event.bounce_type == "permanent" else BounceKind.TRANSIENT
        reason = reason_of(event.code, event.diagnostic)
        # The operator's relay said whether it is final; the reason may still say it is not the reader's.
        if kind_of_reason(reason, event.code) in (BounceKind.SENDER, BounceKind.TRANSIENT):
            kind = kind_of_reason(reason, event.code)
    key = event.id or json.dumps(item, sort_keys=True, default=str)
    return Reading([build_report(kind, "json", report_key=key, recipient=event.recipient, delivery_id=delivery_id,
                                 message_id=message_id, code=event.code, diagnostic=event.diagnostic,
                                 reason=reason.value)])


def _delivery_ref(value: str | None, return_path: ReturnPath | None,
                  secret: str) -> tuple[int | None, str | None]:
    if not value:
        return None, None
    if value.startswith("<") and value.endswith(">") and "@" in value:
        return None, value
    if "@" in value:
        return (return_path.delivery_of(value) if return_path else None), None
    return read_tag(secret, value), None


# -- Amazon SES through SNS ------------------------------------------------------------------

def verify_sns(message: dict, *, topic_arn: str, now: datetime, fetch_certificate: CertificateFetcher) -> None:
    """Raise BadEvent unless the message is from `topic_arn`, recent, and signed by SNS. The
    cheap checks come first: the certificate is fetched only for a message that passed them."""
    kind = message.get("Type")
    if kind not in SIGNED_FIELDS:
        raise BadEvent("not an SNS message (Type)")
    if message.get("TopicArn") != topic_arn:
        raise BadEvent("not the configured topic")
    _check_timestamp(message.get("Timestamp"), now)
    version = message.get("SignatureVersion")
    if version not in HASHES:
        raise BadEvent("unsupported SignatureVersion")
    url = message.get("SigningCertURL")
    if not isinstance(url, str) or not _is_sns_certificate_url(url, topic_arn):
        raise BadEvent("SigningCertURL is not SNS's certificate on the sns.<region>.amazonaws.com host of the "
                       "topic's region")
    signed = ""
    for name in SIGNED_FIELDS[kind]:
        value = message.get(name)
        if value is None and name == "Subject":
            continue
        if not isinstance(value, str):
            raise BadEvent(f"{name} missing")
        signed += f"{name}\n{value}\n"
    try:
        signature = base64.b64decode(message.get("Signature") or "", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadEvent(f"signature or certificate unreadable: {type(exc).__name__}") from None
    try:
        key = x509.load_pem_x509_certificate(fetch_certificate(url)).public_key()
    except (ValueError, TypeError) as exc:
        raise BadEvent(f"signature or certificate unreadable: {type(exc).__name__}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadEvent("the certificate's key is not RSA")
    try:
        key.verify(signature, signed.encode(), padding.PKCS1v15(), HASHES[version]())
    except InvalidSignature:
        raise BadEvent("bad signature") from None


def _check_timestamp(value: object, now: datetime) -> None:
    try:
        stamp = datetime.fromisoformat(value) if isinstance(value, str) and len(value) <= 40 else None
    except ValueError:
        stamp = None
    if stamp is None or stamp.tzinfo is None:
        raise BadEvent("Timestamp missing or not an ISO 8601 time with its zone")
    if stamp < now - MAX_MESSAGE_AGE:
        raise BadEvent(f"Timestamp {value} is more than an hour old: refused as a replay")
    if stamp > now + MAX_CLOCK_AHEAD:
        raise BadEvent(f"Timestamp {value} is in the future")


def _is_sns_certificate_url(url: str, topic_arn: str) -> bool:
    """SNS's own certificate name, on the host of the topic's region: any other URL would
    cost a fetch, and push the real certificate out of the cache."""
    parts = urlsplit(url)
    host = SNS_HOST.fullmatch(parts.hostname or "")
    return (parts.scheme == "https" and host is not None and parts.port in (None, 443) and not parts.username
            and not parts.query and not parts.fragment and SNS_CERTIFICATE_PATH.fullmatch(parts.path) is not None
            and host["region"] == _region_of(topic_arn))


def _region_of(topic_arn: str) -> str | None:
    """arn:aws:sns:<region>:<account>:<name>"""
    fields = topic_arn.split(":")
    return fields[3] if len(fields) == 6 else None


def fetch_sns_certificate(url: str, *, allow_private: bool = False) -> bytes:
    """The certificate, over verified TLS, through the feeds' guarded transport: public
    addresses only, a deadline for the whole fetch, no redirect, and at most
    MAX_CERTIFICATE bytes after decoding."""
    with httpx.Client(transport=GuardedTransport(allow_private=allow_private, deadline=CERTIFICATE_TIMEOUT),
                      timeout=CERTIFICATE_TIMEOUT, trust_env=False, follow_redirects=False,
                      headers={"Accept-Encoding": ACCEPT_ENCODING}) as client:
        with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise ValueError(f"HTTP {response.status_code} for the certificate")
            return read_body(response, max_bytes=MAX_CERTIFICATE)


class CertificateUnavailable(Exception):
    """The certificate could not be fetched (now, or a short while ago: the failure is cached)."""


class CertificateCache:
    """A CertificateFetcher that remembers: each URL's certificate for `ttl` seconds, its
    failure for `failure_ttl`, at most `size` URLs (the least recently used leaves first).
    Two posts missing at once may both fetch; neither waits on the other's fetch."""

    def __init__(self, fetch: CertificateFetcher, *, size: int = MAX_CERTIFICATES, ttl: float = CERTIFICATE_TTL,
                 failure_ttl: float = CERTIFICATE_FAILURE_TTL) -> None:
        self._fetch = fetch
        self._size, self._ttl, self._failure_ttl = size, ttl, failure_ttl
        self._entries: OrderedDict[str, tuple[float, bytes | str]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, url: str) -> bytes:
        with self._lock:
            entry = self._entries.get(url)
            if entry is not None and entry[0] > time.monotonic():
                self._entries.move_to_end(url)
                return _certificate_or_raise(entry[1])
        try:
            value: bytes | str = self._fetch(url)
            ttl = self._ttl
        except Exception as exc:  # noqa: BLE001 - whatever failed is remembered, and said as unavailable
            value, ttl = f"{type(exc).__name__}: {exc}"[:300], self._failure_ttl
        with self._lock:
            self._entries[url] = (time.monotonic() + ttl, value)
            self._entries.move_to_end(url)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return _certificate_or_raise(value)


def _certificate_or_raise(value: bytes | str) -> bytes:
    if isinstance(value, str):
        raise CertificateUnavailable(value)
    return value


# SES's bounceSubType, where the status code and diagnostic say nothing we know.
SES_SUBTYPES = {"NoEmail": Reason.USER_UNKNOWN, "Suppressed": Reason.USER_UNKNOWN,
                "OnAccountSuppressionList": Reason.USER_UNKNOWN, "MailboxFull": Reason.MAILBOX_FULL,
                "MessageTooLarge": Reason.MESG_TOO_BIG, "ContentRejected": Reason.CONTENT_ERROR,
                "AttachmentRejected": Reason.CONTENT_ERROR}


def read_ses(notification: Any, *, return_path: ReturnPath | None, sns_id: str,
             address_trusted: bool = True) -> Reading:
    """An SES notification (the SNS Message, decoded, or mailed as JSON text): its bounce
    or complaint reports. A `Delivery` notice is not a failure."""
    if not isinstance(notification, dict):
        raise BadEvent("the SES notification is not a JSON object")
    kind = notification.get("notificationType") or notification.get("eventType")
    mail = notification.get("mail") if isinstance(notification.get("mail"), dict) else {}
    source = mail.get("source")
    delivery_id = return_path.delivery_of(source) if return_path and isinstance(source, str) else None
    headers = mail.get("commonHeaders") if isinstance(mail.get("commonHeaders"), dict) else {}
    message_id = headers.get("messageId") if isinstance(headers.get("messageId"), str) else None
    if kind == "Bounce":
        bounce = _dict(notification.get("bounce"))
        permanent = bounce.get("bounceType") == "Permanent"
        reports = []
        for item in _list(bounce.get("bouncedRecipients")):
            status = _str(item.get("status"))
            # Whatever is no enhanced status code is read as none (the words and the sub-type still say).
            code = status.strip() if status and ENHANCED.fullmatch(status.strip()) else None
            diagnostic = _str(item.get("diagnosticCode"))
            reason = reason_of(code, diagnostic)
            if reason is Reason.UNDEFINED:
                reason = SES_SUBTYPES.get(str(bounce.get("bounceSubType")), Reason.UNDEFINED)
            # An SES "Permanent" is final; its reason may still say whose fault it was.
            found = BounceKind.PERMANENT if permanent else BounceKind.TRANSIENT
            by_reason = kind_of_reason(reason, code)
            if by_reason in (BounceKind.SENDER, BounceKind.TRANSIENT):
                found = by_reason
            reports.append(build_report(
                found, "ses", report_key=str(bounce.get("feedbackId") or sns_id),
                recipient=_str(item.get("emailAddress")), delivery_id=delivery_id, message_id=message_id,
                code=code, address_trusted=address_trusted, reason=reason.value,
                diagnostic=diagnostic or f"SES {bounce.get('bounceType')}/{bounce.get('bounceSubType')}"))
        return Reading(reports) if reports else Reading(ignored="SES bounce without recipients")
    if kind == "Complaint":
        complaint = _dict(notification.get("complaint"))
        feedback = _str(complaint.get("complaintFeedbackType"))
        if feedback and feedback.lower() not in ("abuse", "fraud"):
            return Reading(ignored=f"SES complaint of type {feedback[:40]!r}: not a complaint")
        return Reading([build_report(BounceKind.COMPLAINT, "ses", report_key=str(complaint.get("feedbackId") or sns_id),
                                     recipient=_str(item.get("emailAddress")), delivery_id=delivery_id,
                                     message_id=message_id, diagnostic=f"feedback-type: {feedback or 'unknown'}",
                                     address_trusted=address_trusted, reason=Reason.FEEDBACK.value)
                        for item in _list(complaint.get("complainedRecipients"))])
    return Reading(ignored=f"SES {str(kind)[:40]} notification: nothing to act on")


def _dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[dict]:
    return [v for v in value[:MAX_RECIPIENTS] if isinstance(v, dict)] if isinstance(value, list) else []


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
