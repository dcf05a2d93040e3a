"""One subscriber's finished message from a rendered variant: the per-recipient hot path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage

from worker.render.digest import RenderedVariant
from worker.render.message import Envelope, build_message, dkim_sign, message_bytes, needs_smtputf8
from worker.render.personalise import PersonalDigest, Recipient, personalise
from worker.settings import Settings
from worker.tokens import message_id, unsubscribe_token


@dataclass(frozen=True)
class Addressee:
    """Who gets a copy. `subscriber_id` is None for a test send to an outside address."""

    email: str
    name: str | None
    subscriber_id: int | None


@dataclass(frozen=True)
class Composed:
    digest: PersonalDigest
    message: EmailMessage
    data: bytes
    message_id: str
    # The envelope needs SMTPUTF8 (a Unicode local part).
    smtputf8: bool


def links(settings: Settings, *, secret: str, edition_key: str, variant_key: str,
          subscriber_id: int | None) -> tuple[str, str]:
    """(unsubscribe URL, view-online URL). A test send's link unsubscribes nobody (id 0)."""
    token = unsubscribe_token(secret, subscriber_id or 0)
    return (
        f"{settings.public_url}/unsubscribe/{token}",
        f"{settings.public_url}/archive/{edition_key}/{variant_key}",
    )


def compose(
    variant: RenderedVariant,
    addressee: Addressee,
    *,
    settings: Settings,
    secret: str,
    test_send: bool = False,
    now: datetime | None = None,
) -> Composed:
    unsubscribe_url, online_url = links(
        settings, secret=secret, edition_key=variant.edition_key, variant_key=variant.key,
        subscriber_id=addressee.subscriber_id,
    )
    digest = personalise(variant, Recipient(addressee.email, addressee.name, unsubscribe_url, online_url))
    ident = addressee.subscriber_id if not test_send else f"test:{addressee.email}:{now}"
    mid = message_id(secret, edition_key=variant.edition_key, subscriber=ident, domain=settings.sender.domain)
    message = build_message(
        digest,
        Envelope(
            sender=settings.sender,
            recipient_email=addressee.email,
            recipient_name=addressee.name,
            message_id=mid,
            list_id=settings.effective_list_id,
            unsubscribe_url=unsubscribe_url,
            unsubscribe_mailto=settings.unsubscribe_mailto,
            date=now,
            subject_prefix="[TEST] " if test_send else "",
        ),
    )
    data = message_bytes(message)
    if settings.dkim_selector and settings.dkim_domain and settings.dkim_key_file:
        data = dkim_sign(data, selector=settings.dkim_selector, domain=settings.dkim_domain,
                         key_file=settings.dkim_key_file)
    return Composed(digest=digest, message=message, data=data, message_id=mid,
                    smtputf8=needs_smtputf8(message))
