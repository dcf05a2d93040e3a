"""/operator: editions and their counts, held editions approved or discarded with a POST that
needs the operator's credential and the page's own token, sources' health; all of it escaped."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
import redis
import sqlalchemy as sa

from tests.support.data import add_subscribers, ledger, load_stories
from tests.support.web import LOOPBACK, REMOTE, web_client
from tests.support.worker import queued
from worker.delivery.plan import find_edition, plan_edition
from worker.digest import week_window
from worker.ingest.sources import add_source
from worker.store.db import session_scope
from worker.store.models import Source

KEY = "weekly-2025-W05"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)
TOKEN = "operator-page-token"
HOSTILE = '<script>alert("x")</script>'


@pytest.fixture
def world(engine, settings, tmp_path, redis_url):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    settings = settings.model_copy(update={"broker_url": redis_url})
    held = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW,
                        hold=f"UA: 1 story, far below its usual 5 {HOSTILE}")
    return engine, settings, held.edition_id




def _csrf(page: str, action: str) -> str:
    form = re.search(rf'action="/operator/editions/{KEY}/{action}"><input type="hidden" name="csrf" value="([^"]+)"',
                     page)
    assert form, page
    return form[1]


def _queued(redis_url) -> int:
    return queued(redis.Redis.from_url(redis_url))


def test_the_page_shows_a_held_edition_with_its_reason_counts_and_buttons(world):
    engine, settings, _ = world
    page = web_client(engine, settings).get("/operator", environ_base=LOOPBACK)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"
    html = page.text
    assert "Held editions" in html and f"<td>{KEY}</td>" in html
    assert "UA: 1 story, far below its usual 5 &lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert HOSTILE not in html
    assert '<span class="pill state-pending">14 pending</span>' in html
    assert '<span class="pill state-skipped">2 skipped</span>' in html and "<div>2 no-stories</div>" in html
    assert "Approve and send" in html and "Discard" in html
    assert _csrf(html, "approve") != _csrf(html, "discard")


def test_approve_releases_it_and_a_second_post_is_harmless(world, redis_url):
    engine, settings, edition_id = world
    client = web_client(engine, settings)
    page = client.get("/operator", environ_base=LOOPBACK).text
    form = {"csrf": _csrf(page, "approve")}
    done = client.post(f"/operator/editions/{KEY}/approve", data=form, environ_base=LOOPBACK,
                       headers={"Origin": "http://localhost"})
    assert done.status_code == 303 and done.headers["Location"] == f"/operator/editions/{KEY}?done=approved"
    edition = find_edition(engine, KEY)
    assert edition.state == "sending" and edition.reason is None
    assert "approved by loopback" in edition.note and "far below its usual 5" in edition.note
    assert _queued(redis_url) == 1  # its 14 rows, one batch, handed to the broker as the CLI does
    shown = client.get(done.headers["Location"], environ_base=LOOPBACK).text
    assert f"{KEY}: approved; its rows were handed to the workers." in shown
    assert "No edition is held." in client.get("/operator", environ_base=LOOPBACK).text

    again = client.post(f"/operator/editions/{KEY}/approve", data=form, environ_base=LOOPBACK)
    assert again.status_code == 409 and f"{KEY} is sending, not held: nothing was changed." in again.text
    assert _queued(redis_url) == 1 and find_edition(engine, KEY).state == "sending"


def test_discard_drops_it(world, redis_url):
    engine, settings, edition_id = world
    client = web_client(engine, settings)
    page = client.get("/operator", environ_base=LOOPBACK).text
    done = client.post(f"/operator/editions/{KEY}/discard", data={"csrf": _csrf(page, "discard")},
                       environ_base=LOOPBACK)
    assert done.status_code == 303 and done.headers["Location"] == f"/operator/editions/{KEY}?done=discarded"
    edition = find_edition(engine, KEY)
    assert edition.state == "skipped" and edition.reason.startswith("discarded by loopback at ")
    assert {state for state, _ in ledger(engine, KEY).values()} == {"skipped"}
    assert _queued(redis_url) == 0
    # The token of one action is worthless for the other.
    approve = client.post(f"/operator/editions/{KEY}/approve", data={"csrf": _csrf(page, "discard")},
                          environ_base=LOOPBACK)
    assert approve.status_code == 400


def test_posts_without_the_token_or_the_credential_are_refused(world, redis_url):
    engine, settings, _ = world
    url = f"/operator/editions/{KEY}/approve"
    local = web_client(engine, settings)
    page = local.get("/operator", environ_base=LOOPBACK).text
    token = _csrf(page, "approve")
    assert local.post(url, data={}, environ_base=LOOPBACK).status_code == 400
    assert local.post(url, data={"csrf": token + "x"}, environ_base=LOOPBACK).status_code == 400
    assert local.post(url, data={"csrf": token}, environ_base=LOOPBACK,
                      headers={"Origin": "https://evil.example"}).status_code == 403
    assert local.post(url, data={"csrf": token}, environ_base=LOOPBACK,
                      headers={"Referer": "https://evil.example/page"}).status_code == 403
    assert local.post(url, data={"csrf": token}, environ_base=REMOTE).status_code == 403  # no token set: loopback only
    assert local.post(f"/operator/editions/{KEY}/publish", data={"csrf": token}, environ_base=LOOPBACK).status_code == 404

    guarded = web_client(engine, settings, TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.get("/operator", environ_base=REMOTE).status_code == 401
    assert guarded.post(url, data={"csrf": token}, environ_base=REMOTE).status_code == 401
    # A token signed for another credential (here: none, on loopback) does not pass with this one.
    assert guarded.post(url, data={"csrf": token}, environ_base=REMOTE, headers=auth).status_code == 400
    assert find_edition(engine, KEY).state == "held" and _queued(redis_url) == 0

    page = guarded.get("/operator", environ_base=REMOTE, headers=auth).text
    done = guarded.post(url, data={"csrf": _csrf(page, "approve")}, environ_base=REMOTE, headers=auth)
    assert done.status_code == 303 and find_edition(engine, KEY).state == "sending"


def test_without_a_secret_key_nothing_is_released(world):
    engine, settings, _ = world
    client = web_client(engine, settings.model_copy(update={"secret_key": None}))
    page = client.get("/operator", environ_base=LOOPBACK).text
    assert "NEWSLETTER_SECRET_KEY is not set" in page and "disabled" in page
    refused = client.post(f"/operator/editions/{KEY}/approve", data={"csrf": "x"}, environ_base=LOOPBACK)
    assert refused.status_code == 503 and find_edition(engine, KEY).state == "held"


def test_sources_health_is_shown_escaped_and_without_passwords(engine, settings):
    good = add_source(engine, "https://feeds.example/ru.xml", region="RU")
    bad = add_source(engine, f"https://editor:hunter2@feeds.example/x.xml?q={HOSTILE}")
    with session_scope(engine) as session:
        session.execute(sa.update(Source).where(Source.id == good.id).values(
            last_success_at=datetime(2025, 2, 2, 12, 30, tzinfo=UTC),
            next_poll_at=datetime(2025, 2, 2, 13, 0, tzinfo=UTC)))
        session.execute(sa.update(Source).where(Source.id == bad.id).values(
            consecutive_failures=4, last_error=f"HTTP 500 {HOSTILE}",
            last_error_at=datetime(2025, 2, 2, 12, 0, tzinfo=UTC),
            next_poll_at=datetime(2025, 2, 2, 16, 0, tzinfo=UTC) + timedelta(hours=4)))
    html = web_client(engine, settings).get("/operator", environ_base=LOOPBACK).text
    assert HOSTILE not in html and "<script" not in html
    assert "hunter2" not in html
    assert (f'<td>{bad.id}</td><td class="url">https://editor:***@feeds.example/x.xml?q=&lt;script&gt;'
            'alert(&#34;x&#34;)&lt;/script&gt;</td>') in html
    assert "HTTP 500 &lt;script&gt;" in html and '<td class="failing">4</td>' in html
    assert '<time datetime="2025-02-02T12:30:00+00:00">2025-02-02 12:30 UTC</time>' in html
    assert "2025-02-02 20:00 UTC" in html  # next poll of the failing one


def test_editions_in_flight_and_recent_are_listed_with_their_counts(engine, settings, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 8)
    plan_edition(engine, key="manual-<b>x</b>", kind="manual", window=week_window("2025-W05", settings.tz), now=NOW)
    html = web_client(engine, settings).get("/operator", environ_base=LOOPBACK).text
    assert "manual-&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html
    assert '<td class="state state-sending">sending</td>' in html and "No edition is held." in html


def test_without_a_token_the_page_answers_only_to_a_loopback_name(world, redis_url):
    """DNS rebinding: evil.example resolving to 127.0.0.1 would make its page same-origin with ours."""
    engine, settings, _ = world
    local = web_client(engine, settings)
    token = _csrf(local.get("/operator", environ_base=LOOPBACK).text, "approve")
    rebound = {"Host": "evil.example:8000", "Origin": "http://evil.example:8000"}
    assert local.get("/operator", environ_base=LOOPBACK, headers={"Host": "evil.example:8000"}).status_code == 403
    refused = local.post(f"/operator/editions/{KEY}/approve", data={"csrf": token}, environ_base=LOOPBACK,
                         headers=rebound)
    assert refused.status_code == 403 and find_edition(engine, KEY).state == "held"
    for host in ("127.0.0.1:8000", "[::1]:8000", "localhost"):
        assert local.get("/operator", environ_base=LOOPBACK, headers={"Host": host}).status_code == 200, host
    # With a token, the token is the proof, whatever name the server is reached by.
    guarded = web_client(engine, settings, TOKEN)
    page = guarded.get("/operator", environ_base=REMOTE, headers={"Host": "ops.example", **_bearer()})
    assert page.status_code == 200


def _bearer():
    return {"Authorization": f"Bearer {TOKEN}"}


def test_approving_on_the_page_plans_the_rows_from_the_stories_stored_now(engine, settings, redis_url, tmp_path):
    """Held as empty; the stories come after: the page says whom approval sends to, and the
    approval hands out exactly those rows (not the hold's no-stories skips)."""
    add_subscribers(engine, 16)
    settings = settings.model_copy(update={"broker_url": redis_url})
    plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW,
                 hold="empty week: no stories in 2025-W05")
    assert {state for state, _ in ledger(engine, KEY).values()} == {"skipped"}
    load_stories(engine, tmp_path)
    client = web_client(engine, settings)
    page = client.get("/operator", environ_base=LOOPBACK).text
    assert '<span class="pill state-skipped">16 skipped</span>' in page
    assert "as held; approving sends to 14 subscribers, from the stories stored now (the preview)" in page
    done = client.post(f"/operator/editions/{KEY}/approve", data={"csrf": _csrf(page, "approve")},
                       environ_base=LOOPBACK)
    assert done.status_code == 303
    rows = ledger(engine, KEY)
    assert sorted(state for state, _ in rows.values()).count("pending") == 14
    assert find_edition(engine, KEY).total == 16 and _queued(redis_url) == 1
