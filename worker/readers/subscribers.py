"""Subscribers in: address and name checks, CSV import, add and remove."""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Engine, select, update

from worker.clock import utcnow
from worker.delivery.tallies import editions_with_rows_of, forget
from worker.errors import UsageError
from worker.operators.audit import audit
from worker.readers.history import KEEP, apply_change
from worker.readers.history import record as record_event
from worker.regions import RegionError, parse_regions
from worker.store.db import session_scope
from worker.store.models import AuditEvent, ChangeVia, EventKind, Subscriber, SubscriberStatus
from worker.text import contains_control, visible_text
from worker.zones import ZoneError, optional_zone

MAX_NAME = 200
# What the audit trail says of a reader after their erasure.
PURGED = "(a purged reader)"
MAX_REGIONS = 20
# What is read of a raw field before any check: a longer value is refused unparsed.
MAX_ADDRESS = 320  # RFC 3696 errata: 64 + 1 + 255
MAX_REGIONS_TEXT = 200


# An RFC 2047 encoded-word: a mail header decodes it, so as (part of) an address it is
# another address in disguise, and a relay refuses it at send. Refused at every input.
_ENCODED_WORD = re.compile(r"=\?[^?]*\?[^?]*\?[^?]*\?=")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
# Providers that deliver a.b@ and ab@ to one mailbox, under the name they deliver for.
DOTLESS_DOMAINS = {"gmail.com": "gmail.com", "googlemail.com": "gmail.com"}


class InvalidSubscriber(ValueError):
    """One subscriber field is unusable; the message is the reason."""


@dataclass(frozen=True)
class SubscriberInput:
    email: str
    email_key: str
    name: str | None
    regions: tuple[str, ...]
    # An IANA name, None for the region's zone, or KEEP: not given, the stored one stays.
    timezone: Any = KEEP
    # A shipped language (worker/i18n.py), None for NEWSLETTER_LANGUAGE, or KEEP.
    language: Any = KEEP


@dataclass
class SubscriberReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    # Unsubscribed, bounced or complained addresses that an import must not revive.
    suppressed: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    # Rows kept with a value replaced (a language we have no catalog for): line, why.
    warnings: list[tuple[int, str]] = field(default_factory=list)


def check_address(raw: str) -> tuple[str, str]:
    """-> (normalised address, de-duplication key). Syntax only, no DNS."""
    value = raw.strip()
    if not value:
        raise InvalidSubscriber("no email address")
    if len(value) > MAX_ADDRESS:
        raise InvalidSubscriber(f"email address too long ({len(value)} > {MAX_ADDRESS} characters)")
    if _ENCODED_WORD.search(value):
        raise InvalidSubscriber(f"invalid email address {value[:80]!r}: an encoded-word (=?...?=) is not an address")
    try:
        result = validate_email(value, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidSubscriber(f"invalid email address {value[:80]!r}: {exc}") from None
    return result.normalized, address_key(result.local_part, result.ascii_domain)


def address_key(local_part: str, ascii_domain: str) -> str:
    """The de-duplication key: the NFC local part with only ASCII letters lower-cased
    (a full case fold would merge mailboxes a server may keep apart: ß and ss, dotless ı),
    and the domain as its lower-case IDNA 2008 A-label, after email-validator's UTS 46
    mapping (so straße.de is xn--strae-oqa.de, not strasse.de)."""
    local = unicodedata.normalize("NFC", local_part).translate(_ASCII_LOWER)
    return f"{local}@{ascii_domain.lower()}"


def mailbox_of(email_key: str) -> tuple[str, str]:
    """(mailbox, domain) of an address key, for limits: every spelling that reaches one
    inbox gives one mailbox (the local part case-folded, without its +tag, and without dots
    at providers that ignore them). Coarser than the key on purpose: it only limits."""
    local, _, domain = email_key.rpartition("@")
    local = local.split("+", 1)[0].casefold()
    if domain in DOTLESS_DOMAINS:
        local, domain = local.replace(".", ""), DOTLESS_DOMAINS[domain]
    return f"{local}@{domain}", domain


def check_name(raw: str | None) -> str | None:
    if raw is None:
        return None
    # Shown in To, the greeting and the pages: invisible and reordering characters go.
    value = visible_text(raw).strip()
    if contains_control(value):
        raise InvalidSubscriber("name contains a line break or control character")
    if len(value) > MAX_NAME:
        raise InvalidSubscriber(f"name too long ({len(value)} > {MAX_NAME} characters)")
    return value or None


def check_regions(raw: str | list[str]) -> tuple[str, ...]:
    if len(raw) > (MAX_REGIONS_TEXT if isinstance(raw, str) else MAX_REGIONS * 2):
        raise InvalidSubscriber(f"too many regions (at most {MAX_REGIONS})")
    try:
        codes = parse_regions(raw)
    except RegionError as exc:
        raise InvalidSubscriber(str(exc)) from None
    if not codes:
        raise InvalidSubscriber("no regions")
    if len(codes) > MAX_REGIONS:
        raise InvalidSubscriber(f"too many regions ({len(codes)} > {MAX_REGIONS})")
    return tuple(codes)


def check_timezone(raw: str | None) -> str | None:
    """An IANA zone, stored as IANA spells it; empty is none (the region's zone)."""
    try:
        return optional_zone(raw)
    except ZoneError as exc:
        raise InvalidSubscriber(str(exc)) from None


def make_input(email: str, name: str | None, regions: str | list[str], timezone: Any = KEEP,
               language: Any = KEEP) -> SubscriberInput:
    address, key = check_address(email)
    zone = timezone if timezone is KEEP else check_timezone(timezone)
    spoken = language if language is KEEP else check_language(language)
    return SubscriberInput(address, key, check_name(name), check_regions(regions), zone, spoken)


def check_language(raw: str | None) -> str | None:
    """A shipped language for a BCP 47 tag ('ru-RU' -> 'ru'); None for none given."""
    from worker.i18n import LanguageError, language_of

    if raw is None or not raw.strip():
        return None
    try:
        return language_of(raw)
    except LanguageError as exc:
        raise InvalidSubscriber(f"language: {exc}") from None


def _set_zone(row: Subscriber, item: SubscriberInput) -> bool:
    """The zone as given (a CSV without the column, or a command without --timezone, keeps it)."""
    if item.timezone is KEEP or item.timezone == row.timezone:
        return False
    row.timezone = item.timezone
    return True


def import_csv(engine: Engine, path: Path) -> SubscriberReport:
    """Upsert every valid row; report the others with their line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return import_text(engine, text, where=str(path), name=path.name)


def import_text(engine: Engine, text: str, *, where: str, name: str) -> SubscriberReport:
    """`import_csv` of a text already read (the console's upload): every row is checked
    before anything is written, so a bad header or a text that is not CSV (UsageError,
    naming `where`) changes nothing. `name` is what the audit trail calls the file."""
    try:
        rows, report = _read_rows(text, where)
    except csv.Error as exc:
        raise UsageError(f"{where}: not a CSV file ({exc})") from None
    items = [r for _, r in rows.values()]
    for begin in range(0, len(items), 500):
        _upsert(engine, items[begin : begin + 500], report)
    audit(engine, "subscribers-imported", name,
          f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
          f"{report.suppressed} suppressed, {len(report.rejected)} rejected")
    return report


def _read_rows(text: str, where: str) -> tuple[dict[str, tuple[int, SubscriberInput]], SubscriberReport]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip().lower() for h in reader.fieldnames or []]
    if "email" not in header or "regions" not in header:
        raise UsageError(f"{where}: the header must be email,name,regions (got {','.join(header)!r})")
    reader.fieldnames = header
    report = SubscriberReport()
    rows: dict[str, tuple[int, SubscriberInput]] = {}
    line = 2  # line 1 is the header
    for record in reader:
        start, line = line, reader.line_num + 1
        if None in record:
            report.rejected.append((start, "too many fields (quote names that contain commas)"))
            continue
        record = {key: unguarded_cell(value) for key, value in record.items()}
        if "status" in header and (record.get("status") or "").strip().lower() not in ("", "active"):
            # The console's export says who left or never confirmed: not made active here.
            if (record.get("status") or "").strip().lower() in {s.value for s in SubscriberStatus}:
                report.suppressed += 1
            else:
                report.rejected.append((start, f"unknown status {(record.get('status') or '')[:40]!r}"))
            continue
        language = record.get("language") or "" if "language" in header else KEEP
        try:
            check_language(language) if language is not KEEP else None
        except InvalidSubscriber as exc:
            # Kept, in the list's own language: the reader still gets the news.
            report.warnings.append((start, f"{exc}; NEWSLETTER_LANGUAGE is used"))
            language = None
        try:
            row = make_input(record.get("email") or "", record.get("name"), record.get("regions") or "",
                             record.get("timezone") or "" if "timezone" in header else KEEP, language)
        except InvalidSubscriber as exc:
            report.rejected.append((start, str(exc)))
            continue
        if row.email_key in rows:
            report.rejected.append((start, f"duplicate of line {rows[row.email_key][0]}"))
            continue
        rows[row.email_key] = (start, row)
    return rows, report


# A spreadsheet runs a cell that starts with one of these as a formula (CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@")


def guarded_cell(value: str) -> str:
    """A cell as the list's CSV export writes it: one a spreadsheet would run as a formula
    gets a leading ' (OWASP's advice), which `unguarded_cell` takes off on import."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def unguarded_cell(value: str | None) -> str | None:
    """A cell of an imported CSV: the ' the export put before a formula's first character
    comes off, so an export imports back as it was (an address may begin with - + or =)."""
    if value and value.startswith("'") and value[1:2] in FORMULA_STARTS:
        return value[1:]
    return value


def _upsert(engine: Engine, items: list[SubscriberInput], report: SubscriberReport) -> None:
    now = utcnow()
    with session_scope(engine) as session:
        keys = [i.email_key for i in items]
        existing = {
            s.email_key: s
            for s in session.scalars(select(Subscriber).where(Subscriber.email_key.in_(keys)))
        }
        added = []
        for item in items:
            row = existing.get(item.email_key)
            if row is None:
                added.append(_new(item))
            elif row.status == SubscriberStatus.PENDING:
                # Signed up on the web and not confirmed: the operator's list says they agreed.
                _confirm_by_operator(session, row, item, via=ChangeVia.IMPORT, at=now)
                _set_zone(row, item)
                report.updated += 1
            elif row.status != SubscriberStatus.ACTIVE:
                report.suppressed += 1
            elif _respell(row, item) | bool(apply_change(
                    session, row, via=ChangeVia.IMPORT, at=now, regions=item.regions, name=item.name,
                    timezone=item.timezone, language=item.language)):
                report.updated += 1
            else:
                report.unchanged += 1
        session.add_all(added)
        session.flush()
        for row in added:
            record_event(session, row, EventKind.SUBSCRIBED, ChangeVia.IMPORT, at=now)
        report.added += len(added)


def _new(item: SubscriberInput) -> Subscriber:
    return Subscriber(
        email=item.email, email_key=item.email_key, name=item.name, regions=" ".join(item.regions),
        status=SubscriberStatus.ACTIVE.value, timezone=None if item.timezone is KEEP else item.timezone,
        language=None if item.language is KEEP else item.language,
    )


def _confirm_by_operator(session, row: Subscriber, item: SubscriberInput, *, via: ChangeVia, at: datetime) -> None:
    """A pending sign-up made active by an operator; its confirmation link dies."""
    clear_confirmation(row)
    apply_change(session, row, via=via, at=at, status=SubscriberStatus.ACTIVE, regions=item.regions,
                 name=item.name if item.name is not None else KEEP)


def _respell(row: Subscriber, item: SubscriberInput) -> bool:
    """The address as last given (same key, another spelling of the local part's case)."""
    if row.email == item.email:
        return False
    row.email = item.email
    return True


def clear_confirmation(row: Subscriber) -> None:
    row.confirm_nonce = row.confirm_sent_at = row.confirm_regions = row.confirm_name = row.confirm_timezone = None
    row.confirm_language = None


def add_subscriber(engine: Engine, item: SubscriberInput, *, resubscribe: bool = False,
                   via: ChangeVia = ChangeVia.CLI, note: str | None = None,
                   only: frozenset[SubscriberStatus] | None = None) -> str:
    """Add or update one subscriber; returns 'added', 'updated' or 'unchanged'.

    A missing name keeps the stored one (add is also how regions are changed). With
    `only`, an existing reader in another status is refused (UsageError) and nothing
    changes: the console changes only an active reader's regions, and resubscribes only
    an unsubscribed one. `note` (a reason) goes into the history with a status change.
    """
    now = utcnow()
    with session_scope(engine) as session:
        query = select(Subscriber).where(Subscriber.email_key == item.email_key)
        row = session.scalar(query.with_for_update() if only is not None else query)
        if row is None and only is not None:
            raise UsageError(f"no subscriber {item.email!r}")
        if row is None:
            row = _new(item)
            session.add(row)
            session.flush()
            record_event(session, row, EventKind.SUBSCRIBED, via, at=now)
            audit(session, "subscriber-added", row.email, " ".join(item.regions))
            return "added"
        if only is not None and row.status not in only:
            raise UsageError(f"{row.email} is {row.status}")
        name = KEEP if item.name is None else item.name
        if row.status == SubscriberStatus.PENDING:
            _confirm_by_operator(session, row, item, via=via, at=now)
            _set_zone(row, item)
            return "updated"
        if row.status != SubscriberStatus.ACTIVE:
            if not resubscribe:
                raise UsageError(
                    f"{row.email} is {row.status}; pass --resubscribe if they asked to come back"
                )
            apply_change(session, row, via=via, at=now, status=SubscriberStatus.ACTIVE,
                         regions=item.regions, name=name, timezone=item.timezone, language=item.language, note=note)
            audit(session, "subscriber-resubscribed", row.email,
                  " ".join(item.regions) + (f": {note}" if note else ""))
            return "updated"
        changed = _respell(row, item) | bool(apply_change(
            session, row, via=via, at=now, regions=item.regions, name=name, timezone=item.timezone,
            language=item.language))
        if changed:
            audit(session, "subscriber-changed", row.email, " ".join(item.regions))
        return "updated" if changed else "unchanged"


def set_status(engine: Engine, email: str, status: SubscriberStatus, *,
               via: ChangeVia = ChangeVia.CLI) -> Subscriber | None:
    """Change a subscriber's status by address; None when the address is unknown."""
    _, key = check_address(email)
    with session_scope(engine) as session:
        row = session.scalar(select(Subscriber).where(Subscriber.email_key == key))
        if row is not None and apply_change(session, row, via=via, at=utcnow(), status=status):
            audit(session, f"subscriber-{status.value}", row.email)
        return row


def set_status_by_id(engine: Engine, subscriber_id: int, status: SubscriberStatus, *, via: ChangeVia) -> bool:
    """Idempotent: True if the status changed, False if it already was `status`."""
    with session_scope(engine) as session:
        row = session.get(Subscriber, subscriber_id, with_for_update=True)
        if row is None or row.status == status:
            return False
        apply_change(session, row, via=via, at=utcnow(), status=status)
        return True


def purge_subscriber(engine: Engine, email: str) -> bool:
    """Delete every trace of an address (a data-erasure request): the row, and with it
    (ON DELETE CASCADE) its history and its ledger rows, whose SMTP replies may quote the
    address. An edition's counts stay; its status report no longer lists them."""
    _, key = check_address(email)
    with session_scope(engine) as session:
        row = session.scalar(select(Subscriber).where(Subscriber.email_key == key))
        if row is None:
            return False
        # Its editions' stored counts lose its rows: found before the delete takes them,
        # forgotten after it (the edition rows are held last, as every change of rows holds them).
        editions = editions_with_rows_of(session, row.id)
        session.delete(row)
        session.flush()
        forget(session, editions)
        # Erasure reaches the operators' record too: it keeps that a reader was purged, not whom.
        session.execute(update(AuditEvent).where(AuditEvent.target == row.email).values(target=PURGED))
        audit(session, "subscriber-purged", PURGED)
        return True
