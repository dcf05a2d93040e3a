"""Shared by the bounce tests: a ledger of sent editions, and reports about it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from worker.bounces.verp import ReturnPath
from worker.store.db import session_scope
from worker.store.models import BounceEvent, Delivery, Edition, Subscriber, SubscriberEvent
from worker.tokens import message_id

SECRET = "test-secret-key"
BOUNCE_ADDRESS = "bounces@bounce.example.org"
NOW = datetime(2025, 3, 3, 12, 0, tzinfo=UTC)
RETURN_PATH = ReturnPath.parse(BOUNCE_ADDRESS, SECRET)


def sent_editions(engine, emails: list[str], editions: int = 1, *, domain: str = "localhost") -> dict:
    """`editions` weekly editions, each sent to every address: {(week number, email): delivery id}."""
    ids: dict = {}
    with session_scope(engine) as session:
        subscribers = {}
        for email in emails:
            row = session.scalar(sa.select(Subscriber).where(Subscriber.email_key == email.casefold()))
            if row is None:
                row = Subscriber(email=email, email_key=email.casefold(), regions="RU", status="active")
                session.add(row)
                session.flush()
            subscribers[email] = row
        for week in range(1, editions + 1):
            start = datetime(2025, 1, 6, tzinfo=UTC) + timedelta(weeks=week - 1)
            edition = Edition(key=f"weekly-2025-W{week:02d}", kind="weekly", label=f"2025-W{week:02d}",
                              window_start=start, window_end=start + timedelta(days=7), state="done",
                              total=len(emails))
            session.add(edition)
            session.flush()
            for email, sub in subscribers.items():
                row = Delivery(edition_id=edition.id, subscriber_id=sub.id, regions="RU", state="sent",
                               attempts=1, last_code=250, last_reply="2.0.0 Ok", sent_at=start,
                               message_id=message_id(SECRET, edition_key=edition.key, subscriber=sub.id,
                                                     domain=domain))
                session.add(row)
                session.flush()
                ids[(week, email)] = row.id
    return ids


def delivery(engine, delivery_id: int) -> Delivery:
    with session_scope(engine) as session:
        return session.get(Delivery, delivery_id)


def subscriber(engine, email: str) -> Subscriber:
    with session_scope(engine) as session:
        return session.scalar(sa.select(Subscriber).where(Subscriber.email_key == email.casefold()))


def events(engine, email: str) -> list[tuple[str, str, str | None]]:
    with session_scope(engine) as session:
        return [(e.kind, e.via, e.note) for e in session.scalars(
            sa.select(SubscriberEvent).join(Subscriber, Subscriber.id == SubscriberEvent.subscriber_id)
            .where(Subscriber.email_key == email.casefold()).order_by(SubscriberEvent.id))]


def bounce_events(engine) -> list[BounceEvent]:
    with session_scope(engine) as session:
        return list(session.scalars(sa.select(BounceEvent).order_by(BounceEvent.id)))


def dsn(recipient: str, *, status: str = "5.1.1", action: str = "failed", to: str = BOUNCE_ADDRESS,
        quoted_message_id: str | None = None, report_id: str = "<dsn-1@mx.example.net>",
        diagnostic: str | None = None) -> bytes:
    """A Postfix-shaped RFC 3464 report."""
    diagnostic = diagnostic or f"smtp; 550 {status} <{recipient}>: Recipient address rejected: User unknown"
    quoted = f"Message-ID: {quoted_message_id}\n" if quoted_message_id else ""
    return f"""Return-Path: <>
Delivered-To: {to}
From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: {to}
Subject: Undelivered Mail Returned to Sender
Message-ID: {report_id}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: {action}
Status: {status}
Diagnostic-Code: {diagnostic}

--B
Content-Type: text/rfc822-headers

From: Melange News <digest@localhost>
To: {recipient}
Subject: This week
{quoted}
--B--
""".replace("\n", "\r\n").encode()


def arf(recipient: str | None, *, feedback_type: str = "abuse", mail_from: str | None = None,
        quoted_message_id: str | None = None, report_id: str = "<arf-1@fbl.example.net>") -> bytes:
    fields = f"Feedback-Type: {feedback_type}\nUser-Agent: Test-FBL/1.0\nVersion: 1\n"
    if mail_from:
        fields += f"Original-Mail-From: <{mail_from}>\n"
    if recipient:
        fields += f"Original-Rcpt-To: <{recipient}>\n"
    quoted = f"Message-ID: {quoted_message_id}\n" if quoted_message_id else ""
    return f"""From: fbl@fbl.example.net
To: abuse@example.org
Subject: complaint
Message-ID: {report_id}
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="F"

--F
Content-Type: text/plain

This is an abuse report.

--F
Content-Type: message/feedback-report

{fields}
--F
Content-Type: text/rfc822-headers

From: Melange News <digest@localhost>
To: redacted@fbl.example.net
{quoted}
--F--
""".replace("\n", "\r\n").encode()
