"""The dashboard (/operator and worker/console/dashboard.py): the numbers on it are those put
in the database (readers per region, the list's weeks, editions' bounce and complaint rates
against status's thresholds), its charts are SVG with every label escaped, and a new
install's empty database renders."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta

from tests.support.data import add_subscribers
from tests.support.web import LOOPBACK, web_client
from worker.clock import utcnow
from worker.console.dashboard import dashboard, week_starts
from worker.store.db import session_scope
from worker.store.models import BounceEvent, Delivery, Edition, SubscriberEvent

HOSTILE = '"><script>alert(1)</script>'
# A Wednesday: its ISO week 2025-W25 runs from Monday 2025-06-16.
NOW = datetime(2025, 6, 18, 12, 0, tzinfo=UTC)


def _readers(engine) -> list[int]:
    ids = [i for i, _, _ in add_subscribers(engine, 3, sets=[("RU", "UA")], prefix="ruua")]
    ids += [i for i, _, _ in add_subscribers(engine, 2, sets=[("UA",)], prefix="ua")]
    ids += [i for i, _, _ in add_subscribers(engine, 1, sets=[("DE",)], prefix="de")]
    ids += [i for i, _, _ in add_subscribers(engine, 1, sets=[(HOSTILE,)], prefix="hostile")]
    with session_scope(engine) as session:
        for n in range(2):  # not active: counted nowhere
            session.add(_subscriber(f"gone{n}@example.org", "RU", "unsubscribed"))
    return ids


def _subscriber(email: str, regions: str, status: str):
    from worker.store.models import Subscriber

    return Subscriber(email=email, email_key=email, regions=regions, status=status)


def _events(engine, subscriber: int, events: list[tuple[str, datetime]]) -> None:
    with session_scope(engine) as session:
        session.add_all(SubscriberEvent(subscriber_id=subscriber, at=at, kind=kind, via="cli", status="active",
                                        regions="RU") for kind, at in events)


def _edition(engine, key: str, subscribers: list[int], *, sent: int, bounced: int = 0, complaints: int = 0,
             late_bounces: int = 0, created: datetime = NOW, state: str = "done") -> None:
    """An edition whose first `sent` readers got it and next `bounced` were refused; the first
    `complaints` complained, and `late_bounces` of the bounced ones bounced after acceptance."""
    start = datetime(2025, 6, 9, tzinfo=UTC)
    with session_scope(engine) as session:
        edition = Edition(key=key, kind="weekly", label="2025-W24", window_start=start,
                          window_end=start + timedelta(days=7), state=state, total=sent + bounced, created_at=created)
        session.add(edition)
        session.flush()
        rows = [Delivery(edition_id=edition.id, subscriber_id=s, regions="RU",
                         state="sent" if n < sent else "bounced") for n, s in enumerate(subscribers[:sent + bounced])]
        session.add_all(rows)
        session.flush()
        reports = [("complaint", row) for row in rows[:complaints]]
        reports += [("permanent", row) for row in rows[sent:sent + late_bounces]]
        session.add_all(BounceEvent(fingerprint=f"{key}-{kind}-{row.id}", kind=kind, source="dsn", delivery_id=row.id,
                                    edition_id=edition.id, subscriber_id=row.subscriber_id)
                        for kind, row in reports)


def test_active_readers_per_region_each_once_per_region_and_once_in_the_total(engine):
    _readers(engine)
    board = dashboard(engine, region_names={"DE": "Deutschland"}, now=NOW)
    assert board.active == 7
    assert [(r.code, r.name, r.active) for r in board.regions] == [
        ("UA", "Ukraine", 5), ("RU", "Russia", 3), (HOSTILE, HOSTILE, 1), ("DE", "Deutschland", 1)]


def test_the_weeks_count_each_measure_per_iso_week_and_nothing_outside_the_range(engine):
    ids = _readers(engine)
    monday = datetime(2025, 6, 16, tzinfo=UTC)
    first = monday - timedelta(weeks=25)
    _events(engine, ids[0], [
        ("requested", NOW - timedelta(hours=1)), ("requested", NOW), ("subscribed", monday),
        ("confirmed", monday - timedelta(seconds=1)),              # Sunday: the week before
        ("unsubscribed", first), ("bounced", first - timedelta(seconds=1)),   # the first week; outside it
        ("complained", datetime(2025, 3, 5, 9, tzinfo=UTC)), ("complained", datetime(2025, 3, 9, 23, tzinfo=UTC)),
        ("bounced", datetime(2025, 3, 10, tzinfo=UTC)),
        ("reactivated", NOW), ("regions-changed", NOW), ("confirm-failed", NOW),   # none of the measures
        ("requested", monday + timedelta(weeks=1)),                 # next week: not yet
    ])
    weeks = dashboard(engine, now=NOW).weeks
    assert len(weeks) == 26 and [w.start for w in weeks] == week_starts(NOW)
    assert weeks[0].start == date(2024, 12, 23) and weeks[0].label == "2024-W52"
    assert weeks[-1].start == date(2025, 6, 16) and weeks[-1].label == "2025-W25"
    got = {w.label: {m: n for m, n in w.counts.items() if n} for w in weeks if any(w.counts.values())}
    assert got == {
        "2025-W25": {"signups": 3},
        "2025-W24": {"confirmations": 1},
        "2024-W52": {"unsubscribes": 1},
        "2025-W10": {"complaints": 2},
        "2025-W11": {"bounces": 1},
    }


def test_editions_are_judged_against_the_thresholds_status_uses(engine):
    readers = [i for i, _, _ in add_subscribers(engine, 400)]
    early = NOW - timedelta(days=30)
    _edition(engine, "weekly-alarm", readers, sent=90, bounced=10, late_bounces=4, created=NOW)
    _edition(engine, "weekly-warn", readers, sent=390, bounced=10, complaints=1, created=early)  # 2.5 %; 0.26 %
    _edition(engine, "weekly-ok", readers, sent=400, created=early - timedelta(days=1))
    _edition(engine, "weekly-complained", readers, sent=300, complaints=1, created=early - timedelta(days=2))
    lines = {e.key: e for e in dashboard(engine, now=NOW).editions}
    alarm = lines["weekly-alarm"]
    assert (alarm.bounces.level, alarm.bounces.count, alarm.bounces.over) == ("alarm", 10, 100)
    assert alarm.counts["sent"] == 90 and alarm.counts["bounced"] == 10 and alarm.complaints.level == "ok"
    assert (lines["weekly-warn"].bounces.level, lines["weekly-warn"].complaints.level) == ("warn", "warn")
    assert (lines["weekly-ok"].bounces.level, lines["weekly-ok"].complaints.level) == ("ok", "ok")
    complained = lines["weekly-complained"].complaints
    assert (complained.level, complained.count, complained.over) == ("alarm", 1, 300)
    assert list(lines) == ["weekly-alarm", "weekly-warn", "weekly-ok", "weekly-complained"]


def test_the_page_shows_the_numbers_put_in_escaped_with_its_charts(engine, settings):
    ids = _readers(engine)
    now = utcnow()
    _events(engine, ids[0], [("requested", now - timedelta(weeks=3)), ("requested", now - timedelta(weeks=3)),
                             ("confirmed", now - timedelta(weeks=3)), ("unsubscribed", now - timedelta(weeks=26))])
    _edition(engine, "weekly-<i>bad</i>", ids, sent=5, bounced=2)
    html = web_client(engine, settings).get("/operator", environ_base=LOOPBACK).text
    assert HOSTILE not in html and "<script>" not in html and "<i>bad</i>" not in html
    assert len(re.findall(r"<h1[ >]", html)) == 1
    assert '<th scope="row">UA</th><td>Ukraine</td><td class="n">5</td>' in html
    assert '<th scope="row">&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;</th>' in html
    assert "<strong>7</strong> active readers" in html
    assert html.count('<svg class="chart"') == 6  # five weeks' measures and the regions
    assert "&lt;script&gt;alert(1)&lt;/script&gt;: 1</title>" in html  # the bar's own title, escaped
    week = (now - timedelta(weeks=3)).isocalendar()
    row = re.search(rf'<th scope="row">{week.year}-W{week.week:02d}</th><td>[-0-9]+</td>((?:<td class="n">\d+</td>)+)',
                    html)
    assert row and re.findall(r">(\d+)<", row[1]) == ["2", "1", "0", "0", "0"]
    assert html.count('<td class="n">0</td>') == 26 * 5 - 2  # the event 26 weeks ago is outside
    link = '<a href="/operator/editions/weekly-%3Ci%3Ebad%3C/i%3E">weekly-&lt;i&gt;bad&lt;/i&gt;</a>'
    assert link in html
    assert '<td class="bounce-rate"><span class="alarm">alarm</span> 28.6 %<div class="muted">2 of 7</div>' in html
    assert "warn from 2 %, alarm from 5 %" in html and "warn from 0.1 %, alarm from 0.3 %" in html


def test_an_empty_install_renders(engine, settings):
    page = web_client(engine, settings).get("/operator", environ_base=LOOPBACK)
    assert page.status_code == 200
    html = page.text
    assert "<strong>0</strong> active readers" in html and "No active readers yet." in html
    assert "No edition is held." in html and "No editions yet." in html and "No sources" in html
    assert html.count('<svg class="chart"') == 5 and "Undo a bounce" in html
