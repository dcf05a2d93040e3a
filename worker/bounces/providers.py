"""Reports a relay posts instead of mailing: our generic JSON event, and Amazon SES's
notifications through SNS (docs/bounces.md has both shapes).

SNS signs each message (SignatureVersion 1: RSA with SHA-1, 2: with SHA-256) with a key
whose certificate it serves at SigningCertURL; the URL must be https on an
`sns.<region>.amazonaws.com` host, and fetching it (once per URL and process) is the
only outbound request here. Whoever could post a forged event still needs that key.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
from collections.abc import Callable
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.bounces.reasons import Reason, kind_of_reason
from worker.bounces.reports import Reading, build_report, reason_of_failure
from worker.bounces.verp import ReturnPath, read_tag
from worker.store.models import BounceKind

log = logging.getLogger(__name__)

MAX_EVENTS = 100
MAX_RECIPIENTS = 50
MAX_CERTIFICATE = 16 * 1024
# A region's name, not any label: `sns.s3.amazonaws.com` or `sns.s3-website-us-east-1...`
# would be an S3 bucket called "sns", whose owner could serve a certificate of their own.
SNS_HOST = re.compile(r"sns\.[a-z]{2}(-[a-z]+)+-\d{1,2}\.amazonaws\.com(\.cn)?")
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
        reason = reason_of_failure(event.code if event.code else None, event.diagnostic)
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

def verify_sns(message: dict, *, fetch_certificate: CertificateFetcher) -> None:
    """Raise BadEvent unless the message is signed by SNS."""
    kind = message.get("Type")
    if kind not in SIGNED_FIELDS:
        raise BadEvent("not an SNS message (Type)")
    version = message.get("SignatureVersion")
    if version not in HASHES:
        raise BadEvent("unsupported SignatureVersion")
    url = message.get("SigningCertURL")
    if not isinstance(url, str) or not _is_sns_certificate_url(url):
        raise BadEvent("SigningCertURL is not an https URL on an sns.<region>.amazonaws.com host")
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
        key = x509.load_pem_x509_certificate(fetch_certificate(url)).public_key()
    except (binascii.Error, ValueError, TypeError) as exc:
        raise BadEvent(f"signature or certificate unreadable: {type(exc).__name__}") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise BadEvent("the certificate's key is not RSA")
    try:
        key.verify(signature, signed.encode(), padding.PKCS1v15(), HASHES[version]())
    except InvalidSignature:
        raise BadEvent("bad signature") from None


def _is_sns_certificate_url(url: str) -> bool:
    parts = urlsplit(url)
    return (parts.scheme == "https" and parts.hostname is not None and SNS_HOST.fullmatch(parts.hostname) is not None
            and parts.port in (None, 443) and not parts.username and parts.path.endswith(".pem"))


@functools.lru_cache(maxsize=16)
def fetch_sns_certificate(url: str) -> bytes:
    """The certificate, over verified TLS, bounded; cached per URL (SNS rotates them rarely)."""
    with httpx.stream("GET", url, timeout=10.0, follow_redirects=False) as response:
        response.raise_for_status()
        data = b""
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) > MAX_CERTIFICATE:
                raise ValueError("certificate too large")
    return data


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
            code = item.get("status") if isinstance(item.get("status"), str) else None
            diagnostic = _str(item.get("diagnosticCode"))
            reason = reason_of_failure(code, diagnostic)
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
