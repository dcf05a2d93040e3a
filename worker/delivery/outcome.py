"""What happened to one message, classified once; the pipeline acts on the class."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Protocol


class Outcome(StrEnum):
    SENT = "sent"
    TEMPORARY = "temporary"   # retry with backoff, then final failed
    PERMANENT = "permanent"   # the mailbox refused: bounced, subscriber suppressed
    REJECTED = "rejected"     # cannot ever go out (e.g. no SMTPUTF8): final failed, nobody suppressed
    SENDER = "sender"         # our side is refused (auth, policy, MAIL FROM): pause the edition
    UNKNOWN = "unknown"       # the server may have accepted it: never re-sent


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    code: int | None = None
    reply: str = ""
    # The connection itself failed (refused, greeting, auth): the rest of the
    # batch would fail the same way, so the batch stops and hands its rows back.
    connection_failed: bool = False
    # Wall time of the SMTP transaction, MAIL FROM to the final reply (None: none took place).
    seconds: float | None = field(default=None, compare=False)

    @property
    def summary(self) -> str:
        return f"{self.code} {self.reply}".strip() if self.code else self.reply


_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def enhanced_code(reply: str) -> tuple[int, int, int] | None:
    match = _ENHANCED.match(reply)
    return (int(match[1]), int(match[2]), int(match[3])) if match else None


def classify(code: int, reply: str, *, stage: str) -> Outcome:
    """Map an SMTP reply at a stage (mail, rcpt, data, eom) to an outcome.

    - 2xx: sent (only meaningful at eom).
    - 4xx and 552 (mailbox full, per RFC 5321 section 4.5.3.1.10): temporary.
    - x.7.x (policy, authentication) anywhere, and any 5xx to MAIL FROM: our side, pause.
    - 5.1.x, 550/551/553 at RCPT (and 5.1.x later): the mailbox, bounce.
    - Other 5xx after DATA: temporary, bounded by max attempts; nobody is blamed.
    """
    enhanced = enhanced_code(reply)
    if 200 <= code < 300:
        return Outcome.SENT
    if 400 <= code < 500 or code == 552 or enhanced == (5, 2, 2):
        return Outcome.TEMPORARY
    if enhanced and enhanced[1] == 7:
        return Outcome.SENDER
    if stage == "mail":
        return Outcome.SENDER
    if enhanced and enhanced[1] == 1:
        return Outcome.PERMANENT
    if stage == "rcpt":
        return Outcome.PERMANENT if code in (550, 551, 553) or enhanced is None or enhanced[1] == 2 \
            else Outcome.TEMPORARY
    if stage == "eom" and code == 554:
        return Outcome.SENDER  # content refused (spam, policy) without an enhanced code
    return Outcome.TEMPORARY


def backoff(attempt: int, *, base_seconds: float, cap_seconds: float = 6 * 3600,
            rng: random.Random | None = None) -> timedelta:
    """Exponential with full jitter in [0.5, 1.5): attempt 1 waits ~base, then doubles."""
    rng = rng or random
    delay = min(base_seconds * 2 ** max(attempt - 1, 0), cap_seconds)
    return timedelta(seconds=delay * (0.5 + rng.random()))


@dataclass(frozen=True)
class Outgoing:
    """One message for one recipient (one SMTP transaction)."""

    sender: str
    recipient: str
    data: bytes
    message_id: str
    smtputf8: bool = False


class Sender(Protocol):
    def send(self, message: Outgoing) -> SendResult: ...

    def close(self) -> None: ...
