"""The sender implementations, picked by NEWSLETTER_EMAIL_BACKEND: smtp, file and
console, and MemorySender, an in-process double for tests. The interface (`Sender`,
`Outgoing`) is in outcome.py, beside what a send returns.

Deduplication is not here: the ledger above the transport decides what is
sent. A sender only moves bytes and says what happened.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from worker.delivery.outcome import Outcome, Outgoing, Sender, SendResult
from worker.delivery.smtp import SmtpSender
from worker.settings import Settings


class FileSender:
    """One .eml per message in the outbox, written atomically (temp file, then rename)."""

    def __init__(self, outbox: Path) -> None:
        self.outbox = Path(outbox)
        self.outbox.mkdir(parents=True, exist_ok=True)

    def path_for(self, message: Outgoing) -> Path:
        name = hashlib.sha256(message.message_id.encode()).hexdigest()[:24]
        return self.outbox / f"{name}.eml"

    def send(self, message: Outgoing) -> SendResult:
        final = self.path_for(message)
        temp = final.with_suffix(f".tmp{os.getpid()}")
        with open(temp, "wb") as fh:
            fh.write(message.data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, final)
        return SendResult(Outcome.SENT, 250, f"written to {final}")

    def close(self) -> None:
        pass


class ConsoleSender:
    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def send(self, message: Outgoing) -> SendResult:
        text = message.data.decode("utf-8", "replace").replace("\r\n", "\n")
        with self._lock:
            self.stream.write(f"--- message for {message.recipient} ---\n{text}\n")
            self.stream.flush()
        return SendResult(Outcome.SENT, 250, "printed")

    def close(self) -> None:
        pass


@dataclass
class MemorySender:
    """A real in-process double: keeps what it was given, can be told to fail."""

    outbox: list[Outgoing] = field(default_factory=list)
    # recipient -> result to return instead of sending
    failures: dict[str, SendResult] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, message: Outgoing) -> SendResult:
        with self.lock:
            if message.recipient in self.failures:
                return self.failures[message.recipient]
            self.outbox.append(message)
        return SendResult(Outcome.SENT, 250, "kept in memory")

    def close(self) -> None:
        pass


class SenderPool:
    """Senders for several SMTP conversations at once, one per delivery lane (thread)."""

    def __init__(self, factory, *, shared: Sender | None = None) -> None:
        self._factory = factory
        self._shared = shared  # file, console and memory senders serve every lane
        self._idle: list[Sender] = []
        self._lock = threading.Lock()

    def acquire(self) -> Sender:
        if self._shared is not None:
            return self._shared
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._factory()

    def release(self, sender: Sender) -> None:
        if self._shared is None:
            with self._lock:
                self._idle.append(sender)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sender in idle:
            sender.close()
        if self._shared is not None:
            self._shared.close()


def make_sender_pool(settings: Settings) -> SenderPool:
    if settings.email_backend == "smtp":
        return SenderPool(lambda: make_sender(settings))
    return SenderPool(None, shared=make_sender(settings))


def make_sender(settings: Settings) -> Sender:
    if settings.email_backend == "smtp":
        return SmtpSender(settings)
    if settings.email_backend == "file":
        return FileSender(settings.outbox_dir)
    return ConsoleSender()
