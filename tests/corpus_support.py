"""The labelled corpus (tests/samples/corpus: sisimai/set-of-emails with sisimai's own
expected reasons) read by our reader, and scored: what kind each mail should have, by
sisimai's reason through our reason -> kind table, against the kind we read."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.bounce_support import RETURN_PATH
from worker.bounces.reasons import KINDS, Reason
from worker.bounces.reports import UnreadableReport, read_report

CORPUS = Path(__file__).parent / "samples" / "corpus"
LABELS: dict[str, list[dict]] = json.loads((CORPUS / "labels.json").read_text())
DISAGREEMENTS: dict[str, dict] = {k: v for k, v in json.loads((CORPUS / "disagreements.json").read_text()).items()
                                  if k != "_"}
SUPPRESSING = {"permanent", "complaint"}
# Sisimai's reasons beside ours: "onhold" is its "cannot tell yet".
ALIASES = {"onhold": "undefined"}
DELIVERY = 4242


def expected_kind(entry: dict) -> str:
    """What one of sisimai's labels means for the reader, by our table."""
    reason = Reason(ALIASES.get(entry["reason"], entry["reason"]))
    if reason is Reason.FEEDBACK:
        return "complaint" if entry.get("feedback", "abuse") in ("abuse", "fraud") else "ignored"
    kind = KINDS[reason]
    if kind is None:
        return "ignored"
    if kind.value == "permanent" and entry["status"].startswith("4."):
        return "transient"  # a mailbox reason under a temporary status: the server says it may pass
    if kind.value == "review" and entry["status"].startswith("4."):
        return "transient"  # a temporary failure the relay gave up on, reason unknown: counted as one
    return kind.value


def expected(name: str) -> set[str]:
    if name in DISAGREEMENTS:
        kind = DISAGREEMENTS[name]["kind"]
        return set(kind) if isinstance(kind, list) else {kind}
    return {expected_kind(e) for e in LABELS[name]}


def tagged(data: bytes) -> bytes:
    """The sample as it reaches our bounce mailbox: delivered to our VERP address."""
    return b"Delivered-To: " + RETURN_PATH.for_delivery(DELIVERY).encode() + b"\n" + data


@dataclass
class Scored:
    name: str
    expected: set[str]
    got: set[str]
    reasons: list[str]
    label_reasons: list[str]

    @property
    def right(self) -> bool:
        return self.got == self.expected

    @property
    def wrongful(self) -> bool:
        """The reader suppressed for a reason that is not theirs."""
        return bool((self.got & SUPPRESSING) - self.expected)


def read_one(name: str) -> Scored:
    data = tagged((CORPUS / name).read_bytes())
    try:
        reading = read_report(data, return_path=RETURN_PATH, message_id_domain="localhost")
        got = {r.kind.value for r in reading.reports} or {"ignored"}
        reasons = [r.reason or "" for r in reading.reports] or [f"ignored: {reading.ignored}"]
    except UnreadableReport as exc:
        got, reasons = {"review"}, [f"unreadable: {exc}"]
    return Scored(name, expected(name), got, reasons, [e["reason"] for e in LABELS[name]])


def score() -> list[Scored]:
    return [read_one(name) for name in sorted(LABELS)]
