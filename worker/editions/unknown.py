"""Deciding an edition's `unknown` rows (worker/delivery/resolve.py): what `newsletter
deliveries resolve` and the console's edition page both call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from worker.clock import utcnow
from worker.delivery.plan import finish_if_done, require_edition
from worker.delivery.resolve import Resolution, resolve_unknown
from worker.store.models import EditionState


@dataclass(frozen=True)
class Decided:
    key: str
    edition_id: int
    # The edition's state when it was decided: a paused one sends resent rows after `resume`.
    state: EditionState
    sent: bool                 # marked sent; else to be sent again
    changed: int               # rows decided by this call (a row decided twice is decided once)
    # Addresses asked for with no unknown row in the edition: address key -> its row's state, or None.
    not_unknown: Mapping[str, str | None]
    who: str
    at: datetime


def decide_unknown(engine: Engine, key: str, *, sent: bool, keys: list[str] | None, who: str,
                   now: datetime | None = None) -> Decided:
    """Mark the edition's unknown rows of the readers whose address keys are `keys` (None:
    all of them) sent, or put them back to pending to be sent again. Marked sent, an
    edition with nothing open left is done; resent, a done one sends again. Raises
    UsageError when there is no edition by that key."""
    row = require_edition(engine, key)
    now = now or utcnow()
    result = resolve_unknown(engine, row.id, resolution=Resolution.SENT if sent else Resolution.RESEND,
                             keys=keys, who=who, now=now)
    if sent:
        finish_if_done(engine, row.id, now)
    return Decided(row.key, row.id, EditionState(row.state), sent, result.changed, dict(result.not_unknown),
                   who, now)
