"""Reports from a mailbox: a Maildir, an mbox file, or the configured IMAP folder.

Each message is read once: in a Maildir a processed message gets the "seen" flag (moved
from new/ to cur/ with `:2,S`), over IMAP the \\Seen flag (read with BODY.PEEK, so
reading alone flags nothing). A message that cannot be read (over MAX_REPORT_BYTES,
broken, or one that trips the bounce detectors) is kept and flagged for a human (the
Maildir "F" flag, IMAP \\Flagged), reported, and not read again. An mbox file is
only read, never changed: processing it twice changes nothing (bounce_events is unique by
fingerprint). A run reads at most MAX_PER_RUN messages; the next run takes the rest.
A database error stops the run with the message unflagged, so it is read again.
"""

from __future__ import annotations

import logging
import mailbox
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError
from sqlalchemy import Engine

from worker.bounces.apply import Applied, Target, apply_report, would_apply
from worker.bounces.reports import MAX_REPORT_BYTES, Reading, Report, UnreadableReport, read_report
from worker.bounces.verp import ReturnPath
from worker.errors import ConfigError
from worker.settings import Settings

log = logging.getLogger(__name__)

MAX_PER_RUN = 1000
IMAP_TIMEOUT = 30.0


@dataclass
class RunSummary:
    messages: int = 0
    applied: Counter = field(default_factory=Counter)   # by kind
    duplicates: int = 0
    unmatched: int = 0
    unverified: int = 0                                  # an address alone while VERP is on
    ignored: Counter = field(default_factory=Counter)   # by reason
    kept: list[str] = field(default_factory=list)       # "name: why"
    more: bool = False                                  # MAX_PER_RUN reached
    # With dry_run: what each message would do, nothing applied (one entry per report).
    readings: list[dict] = field(default_factory=list)

    def describe(self) -> str:
        applied = ", ".join(f"{n} {k}" for k, n in sorted(self.applied.items())) or "none"
        text = (f"{self.messages} messages read; applied: {applied}; {self.duplicates} already processed; "
                f"{self.unmatched} for no delivery of ours; {self.unverified} naming only an address "
                f"(not believed); {sum(self.ignored.values())} ignored; "
                f"{len(self.kept)} kept for a human")
        return text + ("; more remain for the next run" if self.more else "")


class _Processor:
    def __init__(self, engine: Engine, settings: Settings, now: datetime, *, dry_run: bool = False) -> None:
        self.engine, self.settings, self.now, self.dry_run = engine, settings, now, dry_run
        secret = settings.require_secret_key()
        self.return_path = ReturnPath.parse(settings.bounce_address, secret) if settings.bounce_address else None
        self.summary = RunSummary()

    def one(self, name: str, data: bytes | None, *, size: int | None = None) -> bool:
        """Process one message; False when it is kept for a human."""
        self.summary.messages += 1
        try:
            if data is None or len(data) > MAX_REPORT_BYTES:
                raise UnreadableReport(f"{size if data is None else len(data)} bytes, over the "
                                       f"{MAX_REPORT_BYTES} read")
            reading = read_report(data, return_path=self.return_path,
                                  message_id_domain=self.settings.sender.domain)
        except UnreadableReport as exc:
            return self._keep(name, str(exc))
        except Exception as exc:  # a parser bug met by hostile input: this message, not the run
            log.exception("reading report %s", name)
            return self._keep(name, f"cannot read: {type(exc).__name__}")
        if self.dry_run:
            self._describe(name, reading)
        else:
            self._apply(reading)
        return True

    def _keep(self, name: str, why: str) -> bool:
        if self.dry_run:
            self.summary.readings.append(_line(name, None, f"kept for a human: {why}"))
        else:
            log.warning("bounce report %s kept for a human: %s", name, why)
        self.summary.kept.append(f"{name}: {why}")
        return False

    def _describe(self, name: str, reading: Reading) -> None:
        if not reading.reports:
            self.summary.ignored[reading.ignored or "nothing to act on"] += 1
            self.summary.readings.append(_line(name, None, reading.ignored or "nothing to act on"))
        for report in reading.reports:
            self.summary.readings.append(_line(name, report, None, would_apply(self.engine, report)))

    def _apply(self, reading: Reading) -> None:
        if not reading.reports:
            self.summary.ignored[reading.ignored or "nothing to act on"] += 1
        for report in reading.reports:
            result = apply_report(self.engine, report, transient_limit=self.settings.bounce_transient_limit,
                                  now=self.now)
            if result is Applied.APPLIED:
                self.summary.applied[report.kind.value] += 1
            elif result is Applied.DUPLICATE:
                self.summary.duplicates += 1
            elif result is Applied.UNVERIFIED:
                self.summary.unverified += 1
            else:
                self.summary.unmatched += 1


# Why a report would not be acted on, as the dry run says it.
_NOT_APPLIED = {Applied.UNMATCHED: "matches no delivery or live confirmation link of ours",
                Applied.UNVERIFIED: "names no delivery of ours (no tag or Message-ID)",
                Applied.DUPLICATE: "processed before"}


def _line(name: str, report: Report | None, ignored: str | None, target: Target | None = None) -> dict:
    """One report as `bounces process --dry-run --json` prints it: what apply_report would do."""
    if report is None or target is None:
        return {"file": name, "kind": None, "reason": None, "recipient": None, "code": None, "delivery": None,
                "signup": None, "ignored": ignored}
    applied = target.applied is Applied.APPLIED
    return {"file": name, "kind": report.kind.value if applied else None, "reason": report.reason,
            "recipient": report.recipient, "code": report.code, "delivery": target.delivery_id,
            "signup": target.subscriber.id if target.delivery is None and target.subscriber is not None else None,
            "ignored": None if applied else _NOT_APPLIED[target.applied]}


def process_maildir(engine: Engine, settings: Settings, path: Path, *, now: datetime,
                    dry_run: bool = False) -> RunSummary:
    """Each unseen message once; with dry_run, read only: nothing applied, nothing moved."""
    work = _Processor(engine, settings, now, dry_run=dry_run)
    for sub in ("new", "cur"):
        if not (path / sub).is_dir():
            raise ConfigError(f"{path} is not a Maildir (no {sub}/ folder)")
    for sub in ("new", "cur"):
        for entry in sorted(os.scandir(path / sub), key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue
            base, _, info = entry.name.partition(":")
            flags = info[2:] if info.startswith("2,") else ""
            if "S" in flags or "F" in flags or "T" in flags:
                continue
            if work.summary.messages >= MAX_PER_RUN:
                work.summary.more = True
                return work.summary
            size = entry.stat(follow_symlinks=False).st_size
            data = None
            if size <= MAX_REPORT_BYTES:
                with open(entry.path, "rb") as f:
                    data = f.read(MAX_REPORT_BYTES + 1)
            done = work.one(f"{sub}/{entry.name}", data, size=size)
            if dry_run:
                continue
            flag = "S" if done else "F"
            os.replace(entry.path, path / "cur" / f"{base}:2,{''.join(sorted(flags + flag))}")
    return work.summary


def process_mbox(engine: Engine, settings: Settings, path: Path, *, now: datetime,
                 dry_run: bool = False) -> RunSummary:
    work = _Processor(engine, settings, now, dry_run=dry_run)
    box = mailbox.mbox(path, create=False)
    try:
        for number, key in enumerate(box.iterkeys(), 1):
            with box.get_file(key) as f:
                data = f.read(MAX_REPORT_BYTES + 1)
            work.one(f"message {number}", data if len(data) <= MAX_REPORT_BYTES else None, size=len(data))
    finally:
        box.close()
    return work.summary


@dataclass(frozen=True)
class ImapLocation:
    host: str
    port: int
    username: str
    password: str
    folder: str

    @classmethod
    def parse(cls, url: str) -> ImapLocation:
        parts = urlsplit(url)
        if parts.scheme != "imaps" or not parts.hostname or not parts.username:
            # Never echo the URL: it holds the password.
            raise ConfigError("NEWSLETTER_BOUNCE_MAILBOX must be imaps://user:password@host[:port]/FOLDER")
        return cls(parts.hostname, parts.port or 993, unquote(parts.username), unquote(parts.password or ""),
                   unquote(parts.path.lstrip("/")) or "INBOX")


def process_imap(engine: Engine, settings: Settings, location: ImapLocation, *, now: datetime,
                 ssl_context=None, dry_run: bool = False) -> RunSummary:
    try:
        return _process_imap(engine, settings, location, now=now, ssl_context=ssl_context, dry_run=dry_run)
    except (OSError, IMAPClientError) as exc:
        # Named by host and user, never by the URL (it holds the password).
        raise ConfigError(f"bounce mailbox {location.username} at {location.host}:{location.port}: "
                          f"{type(exc).__name__}: {str(exc)[:200]}") from None


def _process_imap(engine: Engine, settings: Settings, location: ImapLocation, *, now: datetime,
                  ssl_context=None, dry_run: bool = False) -> RunSummary:
    work = _Processor(engine, settings, now, dry_run=dry_run)
    with IMAPClient(location.host, port=location.port, ssl=True, ssl_context=ssl_context,
                    timeout=IMAP_TIMEOUT) as client:
        client.login(location.username, location.password)
        client.select_folder(location.folder)
        ids = sorted(client.search(["UNSEEN", "UNFLAGGED"]))
        work.summary.more = len(ids) > MAX_PER_RUN
        for uid in ids[:MAX_PER_RUN]:
            size = client.fetch([uid], ["RFC822.SIZE"]).get(uid, {}).get(b"RFC822.SIZE", 0)
            data = None
            if size <= MAX_REPORT_BYTES:
                data = client.fetch([uid], ["BODY.PEEK[]"]).get(uid, {}).get(b"BODY[]")
            done = work.one(f"uid {uid}", data, size=size)
            if not dry_run:
                client.add_flags([uid], [b"\\Seen" if done else b"\\Flagged"])
        client.logout()
    return work.summary


def process_configured(engine: Engine, settings: Settings, *, now: datetime,
                       dry_run: bool = False) -> RunSummary | None:
    """The configured mailboxes: the local Maildir (NEWSLETTER_BOUNCE_MAILDIR), then the
    IMAP folder (NEWSLETTER_BOUNCE_MAILBOX); None when there is neither."""
    summaries = []
    if settings.bounce_maildir is not None:
        summaries.append(process_maildir(engine, settings, settings.bounce_maildir, now=now, dry_run=dry_run))
    if settings.bounce_mailbox is not None and settings.bounce_mailbox.get_secret_value():
        summaries.append(process_imap(engine, settings, ImapLocation.parse(settings.bounce_mailbox.get_secret_value()),
                                      now=now, dry_run=dry_run))
    if not summaries:
        return None
    total = summaries[0]
    for more in summaries[1:]:
        total.messages += more.messages
        total.applied.update(more.applied)
        total.duplicates += more.duplicates
        total.unmatched += more.unmatched
        total.unverified += more.unverified
        total.ignored.update(more.ignored)
        total.kept += more.kept
        total.more = total.more or more.more
        total.readings += more.readings
    return total
