"""One subscriber's finished message from a rendered variant: the per-recipient hot path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from functools import lru_cache

from worker import metrics
from worker.clock import utcnow
from worker.render.digest import RenderedVariant
from worker.render.links import links
from worker.render.message import Envelope, build_message, mailbox, message_bytes, needs_smtputf8, sign
from worker.render.personalise import PersonalDigest, Recipient, personalise
from worker.render.skeleton import MessageSkeleton
from worker.settings import Settings, parse_address
from worker.text import visible_line
from worker.tokens import message_id


@dataclass(frozen=True)
class Addressee:
    """Who gets a copy. `subscriber_id` is None for a test send to an outside address."""

    email: str
    name: str | None
    subscriber_id: int | None
    # The reader's link key (Subscriber.link_key), signed into their links; none for a test send.
    link_key: str | None = None


@dataclass(frozen=True)
class Composed:
    variant: RenderedVariant
    recipient: Recipient
    # The envelope recipient (IDNA domain), as the To header carries it.
    envelope_to: str
    data: bytes
    message_id: str
    # The envelope needs SMTPUTF8 (a Unicode local part).
    smtputf8: bool

    @property
    def digest(self) -> PersonalDigest:
        """The personalised parts as text (preview and tests; the hot path never needs them)."""
        return personalise(self.variant, self.recipient)


@lru_cache(maxsize=128)
def _skeleton(variant: RenderedVariant, sender: str, list_id: str, test_send: bool) -> MessageSkeleton:
    return MessageSkeleton.build(variant, sender=parse_address(sender), list_id=list_id,
                                 subject_prefix="[TEST] " if test_send else "")


def compose(
    variant: RenderedVariant,
    addressee: Addressee,
    *,
    settings: Settings,
    secret: str,
    test_send: bool = False,
    now: datetime | None = None,
    reference: bool = False,
) -> Composed:
    """One subscriber's message. The skeleton path is the production one; `reference=True`
    builds it with EmailMessage instead (and so does a Unicode local part, which needs
    SMTPUTF8 headers the skeleton does not write).

    Its CPU goes to the stages "personalise" (links, token, Message-ID, address) and
    "mime" (the bytes) of newsletter_stage_cpu_seconds_total.
    """
    clock = metrics.stage_clock()
    urls = links(settings, secret=secret, edition_key=variant.edition_key, variant_key=variant.key,
                 subscriber_id=addressee.subscriber_id, link_key=addressee.link_key, language=variant.language)
    unsubscribe_url = urls.unsubscribe
    # Names stored before they were cleaned at input: To and the greeting show what a person reads.
    name = visible_line(addressee.name or "") or None
    recipient = Recipient(addressee.email, name, unsubscribe_url, urls.view_online, urls.manage,
                          urls.leave(variant.regions), variant.language)
    ident = addressee.subscriber_id if not test_send else f"test:{addressee.email}:{now}"
    mid = message_id(secret, edition_key=variant.edition_key, subscriber=ident, domain=settings.sender.domain)
    to = mailbox(addressee.email, name)
    if reference or not to.username.isascii():
        clock.lap("personalise")
        composed = _compose_reference(variant, addressee, recipient, settings, mid, unsubscribe_url, test_send, now)
        clock.lap("mime")
        return composed
    unsubscribe_header = f"<{unsubscribe_url}>"
    if settings.unsubscribe_mailto:
        unsubscribe_header += f", <mailto:{settings.unsubscribe_mailto}?subject=unsubscribe>"
    date = format_datetime(now or utcnow())
    clock.lap("personalise")
    data = _skeleton(variant, settings.from_address, settings.effective_list_id, test_send).render(
        to=to, recipient=recipient, message_id=mid, date=date, unsubscribe_header=unsubscribe_header,
    )
    data = sign(data, settings)
    clock.lap("mime")
    return Composed(variant=variant, recipient=recipient, envelope_to=to.addr_spec, data=data,
                    message_id=mid, smtputf8=False)


def _compose_reference(variant, addressee, recipient, settings, mid, unsubscribe_url, test_send, now) -> Composed:
    message = build_message(
        personalise(variant, recipient),
        Envelope(
            sender=settings.sender,
            recipient_email=addressee.email,
            recipient_name=recipient.name,
            message_id=mid,
            list_id=settings.effective_list_id,
            unsubscribe_url=unsubscribe_url,
            unsubscribe_mailto=settings.unsubscribe_mailto,
            date=now,
            subject_prefix="[TEST] " if test_send else "",
        ),
    )
    return Composed(variant=variant, recipient=recipient, envelope_to=message["To"].addresses[0].addr_spec,
                    data=sign(message_bytes(message), settings), message_id=mid, smtputf8=needs_smtputf8(message))
