"""Aggregate click counts: story links through /r/<token>, the same for every reader of a
section, counted per story, region and edition; machines counted apart; never a reader."""

import re
from datetime import UTC, datetime

import pytest
import redis
import sqlalchemy as sa

from tests.support.data import outbox_message, send_week
from worker import clicks
from worker.clicks import COUNT_CAP
from worker.store.db import session_scope
from worker.store.models import Story, StoryClick
from worker.tokens import ClickTarget, click_token
from worker.web import create_app

BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


@pytest.fixture
def counting(settings, redis_url):
    return settings.model_copy(update={"count_clicks": True, "public_url": "https://news.example"})


def _links(message) -> tuple[list[str], list[str]]:
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    pattern = r"https://news\.example/r/[A-Za-z0-9._-]+"
    return re.findall(pattern, html), re.findall(pattern, text)


def _client(engine, settings):
    app = create_app(settings, engine)
    app.testing = True
    return app.test_client()


def _get(client, path, *, ip="198.51.100.7", agent=BROWSER, method="get", **headers):
    headers = {"User-Agent": agent or "", **headers}
    return getattr(client, method)(path, headers=headers, environ_base={"REMOTE_ADDR": ip})


def _counts(engine, settings) -> dict[tuple[int, int, str], tuple[int, int]]:
    """The counts in the database, once what waits in Redis is moved there (as the web
    app's flusher does every couple of seconds). A batch another flusher took (an earlier
    test's app, on the same database) is waited for, as a reader of the counts would."""
    import time

    conn = redis.Redis.from_url(settings.ratelimit_storage_url)
    waiting = f"{clicks.namespace(engine, 'test-secret-key')}/counts*"
    deadline = time.monotonic() + 10
    while True:
        clicks.flush(conn, engine, "test-secret-key")
        if not list(conn.scan_iter(waiting)) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    with engine.connect() as conn:
        return {(r.edition_id, r.story_id, r.region): (r.clicks, r.discounted)
                for r in conn.execute(sa.select(StoryClick.__table__))}


def _token(edition_id, story_id, region, secret="test-secret-key"):
    return click_token(secret, ClickTarget(edition_id, story_id, region))


def _stories(engine, edition_id):
    """Stories to make links for: a token we sign opens whichever story it names."""
    with session_scope(engine) as session:
        return session.execute(sa.select(Story.id, Story.url).order_by(Story.id)).all()


def test_two_readers_of_a_section_hold_byte_identical_links(sample_engine, counting):
    edition_id = send_week(sample_engine, counting)
    anna, oleksandr = outbox_message(counting, "anna.petrova@example.org"), outbox_message(counting, "oleksandr.koval@example.com")
    li = outbox_message(counting, "li.wei@example.net")  # CN RU: another region set with an RU section
    anna_html, anna_text = _links(anna)
    assert anna_html and anna_text
    # Anna (RU UA) and Oleksandr (UA RU): other orders, the same sections, the same links.
    assert sorted(set(anna_html)) == sorted(set(_links(oleksandr)[0]))
    assert set(anna_text) == set(anna_html)
    ru = {link for link in anna_html if ".RU." in link}
    assert ru and ru <= set(_links(li)[0])
    # Nothing of a reader in them: edition, story, region and the signature.
    for link in anna_html:
        edition, story, region, mac = link.rsplit("/", 1)[1].split(".")
        assert int(edition) == edition_id and region in {"RU", "UA"} and len(mac) == 16


def test_one_open_counts_once_and_redirects_to_the_story(sample_engine, counting):
    edition_id = send_week(sample_engine, counting)
    link = next(link for link in _links(outbox_message(counting, "anna.petrova@example.org"))[0] if ".RU." in link)
    story_id = int(link.rsplit("/", 1)[1].split(".")[1])
    with session_scope(sample_engine) as session:
        url = session.get(Story, story_id).url
    client = _client(sample_engine, counting)
    path = link.removeprefix("https://news.example")
    first = _get(client, path)
    assert first.status_code == 302 and first.headers["Location"] == url
    assert _counts(sample_engine, counting) == {(edition_id, story_id, "RU"): (1, 0)}
    # The same reader again (a double click, a reload, a second look): still one.
    assert _get(client, path).status_code == 302
    assert _counts(sample_engine, counting) == {(edition_id, story_id, "RU"): (1, 0)}
    # Another reader: two.
    assert _get(client, path, ip="203.0.113.9").status_code == 302
    assert _counts(sample_engine, counting) == {(edition_id, story_id, "RU"): (2, 0)}
    # The redirect stores nothing but the count: no address, no agent, no cookie.
    assert "Set-Cookie" not in first.headers
    with sample_engine.connect() as conn:
        columns = [c.name for c in StoryClick.__table__.columns]
        assert columns == ["edition_id", "story_id", "region", "clicks", "discounted"]
        assert conn.execute(sa.select(StoryClick.__table__)).all() == [(edition_id, story_id, "RU", 2, 0)]


@pytest.mark.parametrize(("method", "agent", "headers"), [
    ("head", BROWSER, {}),
    ("get", BROWSER, {"Sec-Purpose": "prefetch"}),
    ("get", BROWSER, {"Purpose": "prefetch"}),
    ("get", BROWSER, {"X-Moz": "prefetch"}),
    ("get", "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))", {}),
    ("get", "python-requests/2.32.3", {}),
    ("get", "Mozilla/5.0 (compatible; Proofpoint URL Defense)", {}),
    ("get", None, {}),
    ("get", "   ", {}),
])
def test_a_scanners_fetch_counts_zero(sample_engine, counting, method, agent, headers):
    edition_id = send_week(sample_engine, counting)
    story_id = _stories(sample_engine, edition_id)[0].id
    client = _client(sample_engine, counting)
    answer = _get(client, f"/r/{_token(edition_id, story_id, 'RU')}", method=method, agent=agent, **headers)
    # The scanner still gets its answer (it checks where the link goes), and no reader is counted.
    assert answer.status_code == 302
    assert _counts(sample_engine, counting) == {(edition_id, story_id, "RU"): (0, 1)}


def test_a_burst_from_one_client_is_a_scanner_and_its_opens_move_to_discounted(sample_engine, counting):
    edition_id = send_week(sample_engine, counting)
    stories = [row.id for row in _stories(sample_engine, edition_id)][:7]
    client = _client(sample_engine, counting)
    # A reader elsewhere opens the first story: that one stays.
    _get(client, f"/r/{_token(edition_id, stories[0], 'RU')}", ip="203.0.113.50")
    # A security gateway walks every link of the mail within a second.
    for story_id in stories[:6]:
        assert _get(client, f"/r/{_token(edition_id, story_id, 'RU')}", ip="192.0.2.44").status_code == 302
    counts = _counts(sample_engine, counting)
    assert counts[(edition_id, stories[0], "RU")] == (1, 1)
    assert all(counts[(edition_id, s, "RU")] == (0, 1) for s in stories[1:6])
    # Marked for a while: its next fetch is discounted too.
    _get(client, f"/r/{_token(edition_id, stories[6], 'RU')}", ip="192.0.2.44")
    assert _counts(sample_engine, counting)[(edition_id, stories[6], "RU")] == (0, 1)
    # A reader who opens four stories in a row is still a reader.
    for story_id in stories[1:5]:
        _get(client, f"/r/{_token(edition_id, story_id, 'RU')}", ip="203.0.113.51")
    assert all(_counts(sample_engine, counting)[(edition_id, s, "RU")] == (1, 1) for s in stories[1:5])


def test_forged_truncated_and_dead_links_are_404_and_count_nothing(sample_engine, counting):
    edition_id = send_week(sample_engine, counting)
    story_id = _stories(sample_engine, edition_id)[0].id
    good = _token(edition_id, story_id, "RU")
    client = _client(sample_engine, counting)
    with session_scope(sample_engine) as session:
        session.add(Story(guid="gone", url="https://news.example/gone", title="Gone", published_at=datetime(
            2025, 1, 28, tzinfo=UTC)))
    with session_scope(sample_engine) as session:
        gone = session.scalar(sa.select(Story).where(Story.guid == "gone"))
        gone_id = gone.id
        session.delete(gone)
    for bad in [
        _token(edition_id, story_id, "RU", secret="another-deployment"),
        good[:-1], good[:20], good + "A", good.replace(".RU.", ".UA."),
        _token(edition_id, gone_id, "RU"),               # a story deleted since
        _token(edition_id + 100, story_id, "RU"),        # no such edition
        "0.1.RU.AAAAAAAAAAAAAAAA", "1.1.ru." + good[-16:], "x" * 10_000, "%0d%0aLocation:%20https://evil.example",
    ]:
        answer = _get(client, f"/r/{bad}")
        assert answer.status_code == 404, bad
        assert "Location" not in answer.headers
    assert _counts(sample_engine, counting) == {}


def test_a_flood_from_one_client_is_refused_429_and_counts_stay_bounded(sample_engine, counting):
    edition_id = send_week(sample_engine, counting)
    story_id = _stories(sample_engine, edition_id)[0].id
    client = _client(sample_engine, counting)
    path = f"/r/{_token(edition_id, story_id, 'RU')}"
    answers = [_get(client, path, ip="192.0.2.99").status_code for _ in range(clicks.CLICKS_PER_MINUTE + 20)]
    assert answers.count(302) == clicks.CLICKS_PER_MINUTE and answers[-20:] == [429] * 20
    assert _counts(sample_engine, counting) == {(edition_id, story_id, "RU"): (1, 0)}
    # Another client is not held back by the first.
    assert _get(client, path, ip="192.0.2.100").status_code == 302


def test_counts_stop_at_their_cap_and_never_go_below_zero(sample_engine, counting):
    edition_id = send_week(sample_engine, counting)
    story_id = _stories(sample_engine, edition_id)[0].id
    target = ClickTarget(edition_id, story_id, "RU")
    clicks.record(sample_engine, {target: [1, 0]})
    with sample_engine.begin() as conn:
        conn.execute(sa.update(StoryClick.__table__).values(clicks=COUNT_CAP - 1, discounted=COUNT_CAP))
    clicks.record(sample_engine, {target: [5, 1]})
    assert _counts(sample_engine, counting)[(edition_id, story_id, "RU")] == (COUNT_CAP, COUNT_CAP)
    with sample_engine.begin() as conn:
        conn.execute(sa.update(StoryClick.__table__).values(clicks=1, discounted=0))
    # A burst's opens moved to discounted after the flush that counted them: never below zero.
    clicks.record(sample_engine, {target: [-3, 3]})
    assert _counts(sample_engine, counting)[(edition_id, story_id, "RU")] == (0, 3)
    # A target of an edition deleted since is dropped, and a negative first count is zero.
    clicks.record(sample_engine, {ClickTarget(edition_id + 50, story_id, "RU"): [1, 0],
                                  ClickTarget(edition_id, story_id, "UA"): [-2, 0]})
    assert _counts(sample_engine, counting) == {(edition_id, story_id, "RU"): (0, 3),
                                                (edition_id, story_id, "UA"): (0, 0)}


def test_off_by_default_links_go_straight_to_the_story_and_sent_links_keep_working(sample_engine, settings,
                                                                                   redis_url):
    edition_id = send_week(sample_engine, settings)
    html = outbox_message(settings, "anna.petrova@example.org").get_body(("html",)).get_content()
    assert "/r/" not in html
    with session_scope(sample_engine) as session:
        story = session.scalars(sa.select(Story).order_by(Story.id)).first()
        urls = set(session.scalars(sa.select(Story.url)))
    assert {link for link in re.findall(r'<h3[^>]*><a href="([^"]+)"', html)} <= urls
    # A link mailed while counting was on still leads to its story once counting is off.
    answer = _get(_client(sample_engine, settings), f"/r/{_token(edition_id, story.id, 'RU')}")
    assert answer.status_code == 302 and answer.headers["Location"] == story.url
    assert _counts(sample_engine, settings) == {}


def test_without_redis_the_reader_still_gets_the_story_and_nothing_is_counted(sample_engine, counting):
    edition_id = send_week(sample_engine, counting)
    story_id = _stories(sample_engine, edition_id)[0].id
    down = counting.model_copy(update={"ratelimit_url": "redis://127.0.0.1:1/0"})
    answer = _get(_client(sample_engine, down), f"/r/{_token(edition_id, story_id, 'RU')}")
    assert answer.status_code == 302
    assert _counts(sample_engine, counting) == {}


def test_counts_show_in_stories_list_status_metrics_and_the_operator_page(sample_engine, counting, run_cli,
                                                                         monkeypatch):
    import json

    edition_id = send_week(sample_engine, counting)
    mailed = list(dict.fromkeys(int(link.rsplit("/", 1)[1].split(".")[1])
                                for link in _links(outbox_message(counting, "anna.petrova@example.org"))[0]))
    first, second = mailed[:2]
    client = _client(sample_engine, counting)
    for ip in ("203.0.113.1", "203.0.113.2", "203.0.113.3"):
        _get(client, f"/r/{_token(edition_id, second, 'UA')}", ip=ip)
    _get(client, f"/r/{_token(edition_id, second, 'RU')}", ip="203.0.113.1")
    _get(client, f"/r/{_token(edition_id, first, 'RU')}", ip="203.0.113.4")
    _get(client, f"/r/{_token(edition_id, first, 'RU')}", method="head")
    with session_scope(sample_engine) as session:
        titles = {s.id: s.title for s in session.scalars(sa.select(Story))}
        guids = {s.id: s.guid for s in session.scalars(sa.select(Story))}
    # Counts another app's flusher took are written before the commands look (they move only
    # what still waits in Redis, and would show a batch in flight a moment later).
    assert sum(clicks for clicks, _ in _counts(sample_engine, counting).values()) == 5
    # The commands read the counts waiting in Redis (the broker's here) first, as the web app would move them.
    for name, value in (("NEWSLETTER_SECRET_KEY", "test-secret-key"), ("NEWSLETTER_TIMEZONE", "UTC"),
                        ("NEWSLETTER_BROKER_URL", counting.broker_url)):
        monkeypatch.setenv(name, value)

    listed = run_cli("stories", "list", "--week", "2025-W05", "--json")
    assert listed.code == 0, listed.err
    by_guid = {row["id"]: row["clicks"] for row in map(json.loads, listed.out.splitlines())}
    assert by_guid[guids[second]] == 4 and by_guid[guids[first]] == 1
    assert sum(by_guid.values()) == 5

    status = run_cli("status", "weekly-2025-W05")
    assert "story links opened 5 times (not counted: 1 fetch by" in status.out
    lines = status.out.splitlines()
    top = lines.index(next(line for line in lines if "most opened" in line))
    assert titles[second] in lines[top + 1] and "UA 3, RU 1" in lines[top + 1] and " 4 " in lines[top + 1]
    assert titles[first] in lines[top + 2]
    data = json.loads(run_cli("status", "weekly-2025-W05", "--json").out)
    assert data["clicks"]["opened"] == 5 and data["clicks"]["discounted"] == 1
    assert [(s["story"], s["clicks"], s["regions"]) for s in data["clicks"]["stories"]] == [
        (second, 4, {"UA": 3, "RU": 1}), (first, 1, {"RU": 1})]

    from pydantic import SecretStr

    operated = _client(sample_engine, counting.model_copy(update={"operator_token": SecretStr("op-token")}))
    auth = {"Authorization": "Bearer op-token"}
    metrics = operated.get("/metrics", headers=auth).text
    assert 'newsletter_story_clicks_total{kind="counted"} 5.0' in metrics
    assert 'newsletter_story_clicks_total{kind="discounted"} 1.0' in metrics
    page = operated.get("/operator/editions/weekly-2025-W05", headers=auth)
    assert page.status_code == 200
    section = page.text.split('id="opened"')[1].split("</section>")[0]
    assert "opened 5 times" in section and section.index(titles[second]) < section.index(titles[first])


def test_concurrent_flushes_move_each_count_once_and_an_abandoned_batch_is_taken_again(sample_engine, counting):
    import threading
    import time

    edition_id = send_week(sample_engine, counting)
    story_id = _stories(sample_engine, edition_id)[0].id
    client = _client(sample_engine, counting)
    conn = redis.Redis.from_url(counting.ratelimit_storage_url)
    space = clicks.namespace(sample_engine, "test-secret-key")
    stop = threading.Event()

    def flushing():
        while not stop.is_set():
            clicks.flush(conn, sample_engine, "test-secret-key")

    flushers = [threading.Thread(target=flushing) for _ in range(3)]
    for thread in flushers:
        thread.start()
    for n in range(200):
        assert _get(client, f"/r/{_token(edition_id, story_id, 'RU')}", ip=f"198.51.100.{n}").status_code == 302
    stop.set()
    for thread in flushers:
        thread.join()
    assert _counts(sample_engine, counting) == {(edition_id, story_id, "RU"): (200, 0)}
    # A batch whose flush died after taking it: left alone while its flush may still run,
    # taken again by the next flush once it is a minute old.
    token = _token(edition_id, story_id, "UA")
    dead = f"{space}/counts/taken/{int(time.time()) - 5}/dead"
    conn.hset(dead, f"c:{token}", 3)
    clicks.flush(conn, sample_engine, "test-secret-key")
    with sample_engine.connect() as db:
        assert db.execute(sa.select(StoryClick.__table__).where(StoryClick.region == "UA")).first() is None
    conn.rename(dead, f"{space}/counts/taken/{int(time.time()) - 61}/dead")
    assert _counts(sample_engine, counting)[(edition_id, story_id, "UA")] == (3, 0)
    assert not list(conn.scan_iter(f"{space}/counts*"))
