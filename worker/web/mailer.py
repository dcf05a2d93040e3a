"""Confirmation mails, sent from a background thread of the web process.

A sign-up answers at once, the same whether a mail goes out or not: the SMTP
conversation (up to NEWSLETTER_SMTP_TIMEOUT per step) must not show in the response
time, which would tell who is already on the list. So the request only records the
sign-up and hands this sender a `ConfirmationDue`; one thread per process sends them in
order through the configured sender backend. A mail that cannot be sent (a full queue,
an SMTP refusal, an error) is recorded on the subscriber's history and its hour's hold
released, so asking again sends one at once. Mails still queued when the process ends
are lost the same way, and the reader asks again. (They go through no ledger: one
message, no edition.)
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from sqlalchemy import Engine

from worker.bounces.verp import ReturnPath
from worker.clock import utcnow
from worker.delivery.mail import open_sender, send_mail
from worker.delivery.outcome import Outcome, Sender
from worker.readers.signup import ConfirmationDue, release_confirmation
from worker.render.confirmation import build_confirmation
from worker.settings import Settings
from worker.tokens import confirm_token, message_id

log = logging.getLogger(__name__)
# Sign-ups are rate limited well below this; a burst past it is not worth holding in memory.
QUEUE_SIZE = 200


def confirm_url(settings: Settings, secret: str, due: ConfirmationDue) -> str:
    return f"{settings.public_url}/confirm/{confirm_token(secret, due.subscriber_id, due.nonce)}"


def send_confirmation(engine: Engine, settings: Settings, due: ConfirmationDue, sender: Sender) -> bool:
    """Build and send one confirmation mail; on failure record it and release the hold."""
    now = utcnow()
    try:
        secret = settings.require_secret_key()
        mail = build_confirmation(
            settings, email=due.email, regions=due.regions, confirm_url=confirm_url(settings, secret, due),
            already_active=due.already_active, now=now, language=due.language,
            message_id=message_id(secret, edition_key="confirm", subscriber=f"{due.subscriber_id}:{due.nonce}",
                                  domain=settings.sender.domain),
            # Its bounce comes back to a tag naming this sign-up's link, and ends it (worker/bounces).
            return_path=(ReturnPath.parse(settings.bounce_address, secret).for_signup(due.subscriber_id, due.nonce)
                         if settings.bounce_address else None),
        )
        result = send_mail(sender, mail)
        reason = None if result.outcome is Outcome.SENT else f"not sent: {result.summary}"
    except Exception as exc:  # noqa: BLE001 - one mail's failure is recorded, never the thread's end
        log.exception("confirmation mail to subscriber %s", due.subscriber_id)
        reason = f"not sent: {type(exc).__name__}: {exc}"
    if reason is None:
        return True
    release_confirmation(engine, due, reason=reason, now=now)
    return False


class ConfirmationMailer:
    def __init__(self, engine: Engine, settings: Settings,
                 sender_factory: Callable[[Settings], Sender] = open_sender) -> None:
        self.engine, self.settings, self.sender_factory = engine, settings, sender_factory
        self._queue: queue.Queue[ConfirmationDue] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._busy = 0

    def submit(self, due: ConfirmationDue) -> None:
        with self._idle:
            self._busy += 1
        try:
            self._queue.put_nowait(due)
        except queue.Full:
            self._done()
            release_confirmation(self.engine, due, reason="not sent: too many sign-ups queued",
                                 now=utcnow())
            return
        self._start()

    def wait_idle(self, timeout: float) -> bool:
        """True once every submitted mail was sent or given up (tests, shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def _start(self) -> None:
        # Started on first use, in the process that serves (after gunicorn's fork).
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="confirmation-mailer", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            due = self._queue.get()
            sender = None
            try:
                sender = self.sender_factory(self.settings)
                send_confirmation(self.engine, self.settings, due, sender)
            except Exception:  # noqa: BLE001 - the thread serves the process's lifetime
                log.exception("confirmation mailer")
            finally:
                if sender is not None:
                    sender.close()
                self._done()

    def _done(self) -> None:
        with self._idle:
            self._busy -= 1
            self._idle.notify_all()
