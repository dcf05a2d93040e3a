"""The console's editions (issue 25): the list, an edition's report (counts by state, by
reply code, by region set; failure reasons, unknown rows, late rates, the sends chart) and
its actions, each the CLI's own function, under the console's form rules."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.support.data import add_subscribers, delivery_rows, ledger, load_stories
from tests.support.web import REMOTE, web_client
from worker.console.editions import MAX_BARS, bar_minutes, edition_list
from worker.delivery.plan import find_edition, plan_edition
from worker.digest import week_window
from worker.editions import handout
from worker.operators.accounts import add_operator
from worker.operators.audit import audit_since
from worker.store.db import session_scope
from worker.store.models import Delivery, Edition

KEY = "weekly-2025-W05"
PAGE = f"/operator/editions/{KEY}"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)
DOWN = "redis://127.0.0.1:1/0"   # nothing listens there: the broker is unreachable
BUSY = "421 4.7.0 try again later"
# reader n is in add_subscribers' REGION_SETS[n % 8]; readers 7 and 15 (JP) have no stories: skipped.
SENT, FAILED, BOUNCED, UNKNOWN = (0, 1, 2, 3), (4, 5, 6), (8,), (9, 10)


def _email(n: int) -> str:
    return f"reader{n}@example.org"


def _partly_sent(engine) -> None:
    rows = delivery_rows(engine, KEY)
    changes = [({"state": "sent", "last_code": 250, "last_reply": f"250 2.0.0 Ok: queued as Q{n}",
                 "sent_at": NOW + timedelta(minutes=n)}, n) for n in SENT]
    changes += [({"state": "failed", "last_code": 421, "last_reply": BUSY}, n) for n in FAILED[:2]]
    changes += [({"state": "failed", "last_code": 451, "last_reply": "451 4.3.0 <b>local</b> error"}, FAILED[2])]
    changes += [({"state": "bounced", "last_code": 550, "last_reply": "550 5.1.1 no such user"}, n) for n in BOUNCED]
    changes += [({"state": "unknown", "last_reply": "connection lost after DATA"}, n) for n in UNKNOWN]
    with session_scope(engine) as session:
        for values, n in changes:
            session.execute(sa.update(Delivery).where(Delivery.id == rows[_email(n)].id).values(**values))


@pytest.fixture
def world(engine, settings, tmp_path, monkeypatch):
    """A sending edition, partly sent, and the broker down; an operator named anna."""
    monkeypatch.setattr(handout, "_APPS", {})
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    settings = settings.model_copy(update={"broker_url": DOWN})
    plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW)
    _partly_sent(engine)
    token = add_operator(engine, "anna")
    return engine, settings, {"Authorization": f"Bearer {token}"}


def _get(world, path=PAGE):
    engine, settings, auth = world
    return web_client(engine, settings).get(path, environ_base=REMOTE, headers=auth)


def _csrf(html: str, action: str) -> str:
    form = re.search(rf'action="/operator/editions/{re.escape(KEY)}/{action}"><input type="hidden" name="csrf" '
                     r'value="([^"]+)"', html)
    assert form, (action, html)
    return form[1]


def _post(world, action: str, html: str | None = None, **kwargs):
    engine, settings, auth = world
    html = html or _get(world).text
    return web_client(engine, settings).post(f"{PAGE}/{action}", data={"csrf": _csrf(html, action)},
                                             environ_base=REMOTE, headers=auth, **kwargs)


def _states(engine) -> dict[str, str]:
    return {email: state for email, (state, _) in ledger(engine, KEY).items()}


def _snapshot(engine):
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, state, attempts, enqueued_at, resolution FROM deliveries "
                                    "ORDER BY id")).all()
        editions = conn.execute(sa.text("SELECT key, state, reason, note FROM editions ORDER BY id")).all()
        audited = conn.execute(sa.text("SELECT count(*) FROM audit_events")).scalar()
    return rows, editions, audited


def test_the_report_counts_rows_by_state_by_reply_code_and_by_region_set(world):
    page = _get(world)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.text
    for state, n in {"pending": 4, "sending": 0, "sent": 4, "failed": 3, "bounced": 1, "skipped": 2,
                     "unknown": 2}.items():
        assert f'<th scope="row"><span class="pill state-{state}">{state}</span></th><td>{n}' in html, state
    codes = re.findall(r'<tr><td><span class="pill state-(\w+)">\w+</span></td><td>(\d+)</td><td>(\d+)</td>', html)
    assert codes == [("sent", "250", "4"), ("failed", "421", "2"), ("failed", "451", "1"), ("bounced", "550", "1")]
    sets = dict(re.findall(r'<tr><th scope="row">([A-Z ]+)</th><td>\d+</td><td>(.*?)</td></tr>', html))
    assert sets["RU UA"] == ('<span class="pill state-sent">1 sent</span> '
                             '<span class="pill state-bounced">1 bounced</span> ')
    assert sets["UA RU"] == ('<span class="pill state-sent">1 sent</span> '
                             '<span class="pill state-unknown">1 unknown</span> ')
    assert sets["JP"] == '<span class="pill state-skipped">2 skipped</span> '
    assert len(sets) == 8
    # Failure reasons, the commonest first, escaped; the unknown rows listed; the actions a sending edition has.
    assert re.search(rf"<td>421</td><td class=\"reason\">{BUSY}</td><td>2</td>", html)
    assert "451 4.3.0 &lt;b&gt;local&lt;/b&gt; error" in html and "<b>local</b>" not in html
    assert _email(9) in html and _email(10) in html and "connection lost after DATA" in html
    for label in ("Retry failed", "Mark sent", "Send again", "Pause"):
        assert f">{label}</button>" in html, label
    assert ">Resume</button>" not in html and ">Approve and send</button>" not in html
    # Late reports and their rates (none yet), and the chart of what was sent, minute by minute.
    assert '<th scope="row">complaints</th><td>0</td><td>0.00 %</td>' in html
    assert '<svg class="chart"' in html and "<title>Messages sent per minute</title>" in html
    assert "<title>07:03: 1</title>" in html and "Messages sent per minute, from" in html


def test_the_chart_is_bucketed_wider_than_a_minute_when_the_span_is_long():
    assert bar_minutes(timedelta(minutes=30)) == 1
    for hours in (2, 10, 30, 24 * 9, 24 * 400):
        width = bar_minutes(timedelta(hours=hours))
        assert (hours * 60 + 1) / width <= MAX_BARS and width > 1, hours


def test_the_list_shows_the_editions_newest_first_a_page_at_a_time(world):
    engine = world[0]
    odd = 'manual-odd key?&<b>"x'
    with session_scope(engine) as session:
        for n, key in enumerate(["weekly-2025-W06", odd]):
            session.add(Edition(key=key, kind="manual", label=f"L{n}", window_start=NOW, window_end=NOW,
                                state="done", total=3, created_at=NOW + timedelta(days=n + 1)))
    first = edition_list(engine, limit=2)
    assert [e.key for e in first.editions] == [odd, "weekly-2025-W06"] and first.older is not None
    rest = edition_list(engine, before=first.older, limit=2)
    assert [e.key for e in rest.editions] == [KEY] and rest.older is None

    html = _get(world, "/operator/editions").text
    assert '<a href="/operator/editions/weekly-2025-W05">weekly-2025-W05</a>' in html
    href = re.search(r'<a href="(/operator/editions/manual-odd[^"]*)">', html)[1]
    assert href == "/operator/editions/manual-odd%20key%3F%26%3Cb%3E%22x"
    assert "manual-odd key?&amp;&lt;b&gt;&#34;x" in html and "<b>" not in html
    assert html.index("manual-odd") < html.index("weekly-2025-W06") < html.index(f">{KEY}<")
    shown = _get(world, href)
    assert shown.status_code == 200 and "<h1>manual-odd key?&amp;&lt;b&gt;&#34;x</h1>" in shown.text
    assert "Nothing sent yet." in shown.text
    older = _get(world, "/operator/editions?before=x' OR 1=1")
    assert older.status_code == 200 and KEY in older.text


def test_an_unknown_edition_is_a_404_page(world):
    missing = _get(world, "/operator/editions/weekly-1999-W01")
    assert missing.status_code == 404 and "There is no edition by that key." in missing.text


def test_retry_failed_puts_failed_rows_back_to_pending_on_the_record(world):
    """The broker is down: the rows stay pending for the reconciler, and the page says so."""
    engine = world[0]
    done = _post(world, "retry")
    assert done.status_code == 303 and done.headers["Location"] == f"{PAGE}?done=requeued-queued"
    states = _states(engine)
    assert [states[_email(n)] for n in FAILED] == ["pending"] * 3
    assert {d.enqueued_at for d in delivery_rows(engine, KEY).values() if d.state == "pending"} == {None}
    entry = audit_since(engine, limit=1)[0][1]
    assert (entry.who, entry.via, entry.action, entry.target) == ("anna", "console", "edition-retried", KEY)
    assert entry.detail == "3 failed rows queued again"
    shown = _get(world, done.headers["Location"]).text
    assert "its failed rows went back to pending; the broker could not be reached" in shown
    assert "No failed rows." in shown

    again = _post(world, "retry", html=_form(world, "retry"))
    assert again.headers["Location"] == f"{PAGE}?done=nothing-failed"


def _form(world, action: str) -> str:
    """A page's form for `action` though the page shows none now (the state moved on)."""
    from worker.web.forms import form_token

    engine, settings, auth = world
    app = web_client(engine, settings).application
    with app.test_request_context(PAGE, headers=auth, environ_base=REMOTE):
        from flask import g

        g.operator = "anna"
        token = form_token(action, KEY)
    return f'<form method="post" action="{PAGE}/{action}"><input type="hidden" name="csrf" value="{token}">'


def test_retry_on_a_working_broker_hands_the_rows_out(world, redis_url):
    engine, settings, auth = world
    world = (engine, settings.model_copy(update={"broker_url": redis_url}), auth)
    done = _post(world, "retry")
    assert done.headers["Location"] == f"{PAGE}?done=requeued"
    assert {d.enqueued_at is not None for d in delivery_rows(engine, KEY).values() if d.state == "pending"} == {True}


def test_unknown_rows_are_marked_sent_or_sent_again(world):
    engine = world[0]
    done = _post(world, "mark-sent")
    assert done.headers["Location"] == f"{PAGE}?done=marked-sent"
    rows = delivery_rows(engine, KEY)
    assert [(rows[_email(n)].state, rows[_email(n)].resolution, rows[_email(n)].resolved_by) for n in UNKNOWN] == [
        ("sent", "sent", "anna")] * 2
    entry = audit_since(engine, limit=1)[0][1]
    assert (entry.who, entry.via, entry.action, entry.detail) == ("anna", "console", "unknown-resolved",
                                                                  "2 rows sent")
    assert "its unknown rows were marked sent." in _get(world, done.headers["Location"]).text


def test_unknown_rows_sent_again_stay_pending_while_the_broker_is_down(world):
    engine = world[0]
    done = _post(world, "send-again")
    assert done.headers["Location"] == f"{PAGE}?done=resent-queued"
    rows = delivery_rows(engine, KEY)
    assert [(rows[_email(n)].state, rows[_email(n)].resolution) for n in UNKNOWN] == [("pending", "resend")] * 2
    assert "No unknown rows." in _get(world).text
    assert _post(world, "send-again", html=_form(world, "send-again")).headers["Location"] == (
        f"{PAGE}?done=nothing-unknown")


def test_pause_then_resume(world):
    engine = world[0]
    done = _post(world, "pause")
    assert done.headers["Location"] == f"{PAGE}?done=paused" and find_edition(engine, KEY).state == "paused"
    html = _get(world, done.headers["Location"]).text
    assert "paused; batches in flight finish" in html and ">Resume</button>" in html and ">Pause</button>" not in html
    twice = _post(world, "pause", html=_form(world, "pause"))
    assert twice.status_code == 409 and find_edition(engine, KEY).state == "paused"

    resumed = _post(world, "resume", html=html)
    assert resumed.headers["Location"] == f"{PAGE}?done=resumed-queued"
    assert find_edition(engine, KEY).state == "sending"
    assert "resumed; the broker could not be reached" in _get(world, resumed.headers["Location"]).text
    assert [e.action for _, e in audit_since(engine, limit=2)] == ["edition-resumed", "edition-paused"]


def test_approve_and_discard_lead_back_to_the_edition(engine, settings, tmp_path, monkeypatch):
    monkeypatch.setattr(handout, "_APPS", {})
    load_stories(engine, tmp_path)
    add_subscribers(engine, 4)
    settings = settings.model_copy(update={"broker_url": DOWN})
    plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW,
                 hold="UA: 1 story, far below its usual 5")
    world = (engine, settings, {"Authorization": f"Bearer {add_operator(engine, 'anna')}"})
    html = _get(world).text
    assert ">Approve and send</button>" in html and ">Discard</button>" in html and ">Pause</button>" not in html
    assert "Held: UA: 1 story, far below its usual 5" in html
    done = _post(world, "approve", html=html)
    assert done.headers["Location"] == f"{PAGE}?done=approved-queued"
    assert find_edition(engine, KEY).state == "sending"
    assert set(_states(engine).values()) == {"pending"}  # planned again, handed to no broker
    assert "approved; the broker could not be reached" in _get(world, done.headers["Location"]).text
    late = _post(world, "discard", html=html)
    assert late.status_code == 409 and find_edition(engine, KEY).state == "sending"


ACTIONS = ("retry", "pause", "mark-sent", "send-again", "resume", "approve", "discard")


@pytest.mark.parametrize("action", ACTIONS)
def test_each_refused_post_changes_nothing(world, action):
    engine, settings, auth = world
    html = _get(world).text + _form(world, action)
    token = _csrf(html, action)
    client = web_client(engine, settings)
    before = _snapshot(engine)
    url = f"{PAGE}/{action}"
    foreign = client.post(url, data={"csrf": token}, environ_base=REMOTE,
                          headers={**auth, "Origin": "https://evil.example"})
    assert foreign.status_code == 403
    assert client.post(url, data={"csrf": token + "x"}, environ_base=REMOTE, headers=auth).status_code == 400
    assert client.post(url, data={}, environ_base=REMOTE, headers=auth).status_code == 400
    assert client.post(url, data={"csrf": token}, environ_base=REMOTE).status_code == 401
    other = _form(world, "pause" if action != "pause" else "retry")
    wrong = re.search(r'value="([^"]+)"', other)[1]
    assert client.post(url, data={"csrf": wrong}, environ_base=REMOTE, headers=auth).status_code == 400
    assert _snapshot(engine) == before


def test_a_post_to_an_edition_that_does_not_exist_is_a_404(world):
    engine, settings, auth = world
    client = web_client(engine, settings)
    from worker.web.forms import form_token

    with client.application.test_request_context("/", headers=auth, environ_base=REMOTE):
        from flask import g

        g.operator = "anna"
        token = form_token("pause", "weekly-1999-W01")
    gone = client.post("/operator/editions/weekly-1999-W01/pause", data={"csrf": token}, environ_base=REMOTE,
                       headers=auth)
    assert gone.status_code == 404
    assert client.post(f"{PAGE}/publish", data={"csrf": token}, environ_base=REMOTE,
                       headers=auth).status_code == 404
