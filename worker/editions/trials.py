"""Trying an edition out without touching the ledger: a dry run (what `send` would do) and
test copies to a few addresses."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from worker.clock import utcnow
from worker.delivery.guard import Overlap, overlapping_editions
from worker.delivery.outcome import Outcome
from worker.delivery.pipeline import draft_renderer
from worker.delivery.plan import active_region_sets, find_edition, next_force_key, region_sets_with_stories
from worker.delivery.senders import Outgoing, make_sender
from worker.delivery.status import EditionStatus
from worker.digest import Window
from worker.editions.plans import Target, count_failed, original_key
from worker.editions.standing import status
from worker.errors import UsageError
from worker.readers.subscribers import InvalidSubscriber, check_address
from worker.render.compose import Addressee, compose
from worker.render.digest import RenderedVariant
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import EditionState


@dataclass(frozen=True)
class DrySet:
    regions: str                      # the region set, codes separated by spaces
    subscribers: int
    variant: RenderedVariant | None   # None: no stories for it, its readers are skipped (no-stories)


@dataclass(frozen=True)
class DryRun:
    """What `send` with the same options would do; nothing was sent or recorded."""

    key: str                                  # the key a send would use (the next -force-N with force)
    window: Window
    existing: EditionStatus | None = None     # the edition that exists, when a send would do nothing
    retry: int | None = None                  # retry: the failed rows it would re-queue...
    state: EditionState | None = None         # ...of the edition in this state
    next_force_key: str | None = None
    overlaps: tuple[Overlap, ...] = ()
    sets: tuple[DrySet, ...] = ()

    @property
    def sending(self) -> int:
        return sum(s.subscribers for s in self.sets if s.variant is not None)

    @property
    def skipped(self) -> int:
        return sum(s.subscribers for s in self.sets if s.variant is None)

    @property
    def largest_clipped(self) -> RenderedVariant | None:
        """The largest variant, when any would be clipped by Gmail."""
        variants = [s.variant for s in self.sets if s.variant is not None]
        if not any(v.clipped for v in variants):
            return None
        return max(variants, key=lambda v: v.html_bytes)


def dry_run(engine: Engine, settings: Settings, target: Target, regions: tuple[str, ...] | None, *,
            force: bool = False, retry: bool = False) -> DryRun:
    """For an edition that exists that is "nothing" (or the failed rows it would re-queue),
    not the count of a fresh plan: only `force` plans anew."""
    key, window = target.key, target.window
    existing = find_edition(engine, key)
    if retry:
        if existing is None:
            raise UsageError(f"no edition {key!r} to retry")
        return DryRun(key, window, retry=count_failed(engine, existing.id), state=EditionState(existing.state))
    if existing is not None and not force:
        return DryRun(key, window, existing=status(engine, existing.id), next_force_key=next_force_key(engine, key))
    if existing is not None:
        key = next_force_key(engine, key)
    sets = _active_sets(engine)
    if regions is not None:
        sets = [(r, n) for r, n in sets if tuple(r.split()) == regions]
    renderer = draft_renderer(engine, settings, window=window, edition_key=key)
    with session_scope(engine) as session:
        with_stories = region_sets_with_stories(session, window, [r for r, _ in sets], wider=settings.wider)
        overlaps = overlapping_editions(session, window, key=original_key(key))
    return DryRun(key, window, overlaps=tuple(overlaps), sets=tuple(
        DrySet(r, n, renderer.variant(tuple(r.split())) if r in with_stories else None) for r, n in sets))


def _active_sets(engine: Engine) -> list[tuple[str, int]]:
    with session_scope(engine) as session:
        return active_region_sets(session)


@dataclass(frozen=True)
class TestCopy:
    __test__ = False  # not a pytest test class, whatever its name

    address: str
    outcome: Outcome
    summary: str


def send_test_copies(engine: Engine, settings: Settings, target: Target, addresses: list[str],
                     regions: tuple[str, ...] | None) -> list[TestCopy]:
    """The edition's digest for `regions` (default: the commonest set) to each address,
    marked as a test; no subscriber's ledger is touched."""
    secret = settings.require_secret_key()
    if regions is None:
        sets = _active_sets(engine)
        if not sets:
            raise UsageError("no active subscribers to take a region set from: give --regions")
        regions = tuple(sets[0][0].split())
    checked = []
    for address in addresses:
        try:
            checked.append(check_address(address)[0])
        except InvalidSubscriber as exc:
            raise UsageError(f"--to: {exc}") from None
    variant = draft_renderer(engine, settings, window=target.window, edition_key=target.key).variant(regions)
    if variant is None:
        raise UsageError(f"no stories for {' '.join(regions)} in {target.window.label}")
    sender = make_sender(settings)
    copies = []
    try:
        for address in checked:
            composed = compose(variant, Addressee(address, None, None), settings=settings, secret=secret,
                               test_send=True, now=utcnow())
            result = sender.send(Outgoing(settings.sender.addr_spec, composed.envelope_to,
                                          composed.data, composed.message_id, composed.smtputf8))
            copies.append(TestCopy(address, result.outcome, result.summary))
    finally:
        sender.close()
    return copies
