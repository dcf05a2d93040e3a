"""One message sent outside any edition (a sign-up's confirmation): no ledger, no batch,
through the backend NEWSLETTER_EMAIL_BACKEND picks, as a digest is. Callers outside the
delivery package (worker/web/mailer.py) use these two functions and the interface in
outcome.py, never a sender implementation."""

from __future__ import annotations

from typing import Protocol

from worker.delivery.outcome import Outgoing, Sender, SendResult
from worker.delivery.senders import make_sender
from worker.settings import Settings


class Mail(Protocol):
    """A whole message ready for the wire (worker/render/confirmation.py: ConfirmationMail)."""

    envelope_from: str
    envelope_to: str
    data: bytes
    message_id: str
    smtputf8: bool


def open_sender(settings: Settings) -> Sender:
    """The configured backend; close it when done."""
    return make_sender(settings)


def send_mail(sender: Sender, mail: Mail) -> SendResult:
    return sender.send(Outgoing(mail.envelope_from, mail.envelope_to, mail.data, mail.message_id, mail.smtputf8))
