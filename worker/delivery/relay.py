"""Relay trouble that passes, passes by itself: a paused edition probes the relay and resumes.

A run of temporary failures (421, 4xx at connect or MAIL, timeouts; NEWSLETTER_ERROR_BUDGET
in a row per lane) pauses the edition with a time to ask the relay again
(`editions.resume_at`, NEWSLETTER_RELAY_PROBE_SECONDS after the pause). The reconciler's
tick probes it then (connect, TLS, login, MAIL FROM, reset: nothing is sent); if it takes
mail the edition resumes by itself, says so in its note and the log, and its rows are
handed out at once; if not, the next probe waits twice as long, up to half an hour.
Sender-side refusals (5.7.x, a 5xx to MAIL FROM, authentication, TLS) pause the edition
for a person: no probe can tell that the cause was fixed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update

from worker.delivery.outcome import Outcome, SendResult
from worker.delivery.plan import resume_edition
from worker.delivery.smtp import SmtpSender
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Edition, EditionState

log = logging.getLogger(__name__)
# However long the relay stays away, it is asked again at least this often.
PROBE_CAP = timedelta(minutes=30)
Probe = Callable[[], SendResult | None]


def probe_delay(settings: Settings, failed_probes: int) -> timedelta:
    """1, 2, 4 ... times NEWSLETTER_RELAY_PROBE_SECONDS, up to PROBE_CAP."""
    return min(timedelta(seconds=settings.relay_probe_seconds * 2 ** min(failed_probes, 20)), PROBE_CAP)


def pause_for_relay(engine: Engine, edition_id: int, reason: str, *, now: datetime, settings: Settings) -> bool:
    """Sending to paused, with a probe time: the pause ends by itself when the relay answers."""
    with session_scope(engine) as session:
        return bool(session.execute(
            update(Edition).where(Edition.id == edition_id, Edition.state == EditionState.SENDING.value)
            .values(state=EditionState.PAUSED.value, reason=reason, resume_at=now + probe_delay(settings, 0),
                    probes=0)).rowcount)


def make_probe(settings: Settings) -> Probe:
    """Ask the configured relay; other backends always take mail."""
    if settings.email_backend != "smtp":
        return lambda: None
    return lambda: SmtpSender(settings).probe(settings.sender.addr_spec)


def resume_probed(engine: Engine, settings: Settings, now: datetime, probe: Probe | None = None) -> list[str]:
    """Paused editions whose probe time has come: one probe for all of them. Resumed if
    the relay takes mail (their keys are returned), else probed again later; a sender-side
    refusal leaves them paused for a person."""
    with session_scope(engine) as session:
        due = session.execute(select(Edition.id, Edition.key, Edition.probes, Edition.resume_at, Edition.note).where(
            Edition.state == EditionState.PAUSED.value, Edition.resume_at <= now)).all()
    if not due:
        return []
    failure = (probe or make_probe(settings))()
    resumed = []
    for edition_id, key, probes, resume_at, note in due:
        if failure is None:
            if resume_edition(engine, edition_id):
                record = f"resumed by itself at {now.isoformat()}: the relay takes mail again"
                _update(engine, edition_id, note=f"{note}; {record}" if note else record)
                log.warning("%s %s", key, record)
                resumed.append(key)
            continue
        if failure.outcome is Outcome.SENDER:
            values = {"resume_at": None, "reason": f"paused: sender refused: {failure.summary}"}
            log.warning("%s stays paused for a person: the relay refuses the sender: %s", key, failure.summary)
        else:
            values = {"resume_at": now + probe_delay(settings, probes + 1), "probes": probes + 1}
            log.warning("%s: relay probe failed (%s); next probe at %s", key, failure.summary,
                        values["resume_at"].isoformat())
        # Compare-and-set on the probe time: of two reconcilers probing at once, one moves it.
        _update(engine, edition_id, resume_at_was=resume_at, **values)
    return resumed


def _update(engine: Engine, edition_id: int, *, resume_at_was: datetime | None = None, **values) -> None:
    with session_scope(engine) as session:
        stmt = update(Edition).where(Edition.id == edition_id)
        if resume_at_was is not None:
            stmt = stmt.where(Edition.state == EditionState.PAUSED.value, Edition.resume_at == resume_at_was)
        session.execute(stmt.values(**values))
