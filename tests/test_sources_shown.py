"""What the operator is shown about sources: credentials in a feed URL masked everywhere
(CLI table and JSON, config, logs, error messages), a URL no poll could ever fetch refused
when it is added, and times with their offset."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from tests.support.http import serve
from worker.delivery.schedule import reconcile
from worker.ingest.sources import add_source
from worker.redact import mask_url
from worker.store.db import session_scope
from worker.store.models import Source

STORY = {"id": "s-1", "url": "https://s.example/1", "title": "Shown", "regions": ["RU"],
         "published_at": "2025-01-28T10:00:00Z"}
SECRETS = ("hunter2", "tok-5ecr3t", "k3y-5ecr3t", "sig-5ecr3t", "ghp_t0ken")
ALLOW = {"NEWSLETTER_FETCH_ALLOW_PRIVATE": "true"}


@pytest.mark.parametrize(("url", "shown"), [
    ("https://editor:hunter2@feeds.example/x.xml", "https://editor:***@feeds.example/x.xml"),
    ("https://ghp_t0ken@feeds.example/x.xml", "https://***@feeds.example/x.xml"),
    ("https://feeds.example/x.xml?token=tok-5ecr3t&region=ru", "https://feeds.example/x.xml?token=***&region=ru"),
    ("https://feeds.example/x?api_key=k3y-5ecr3t&X-Amz-Signature=sig-5ecr3t&X-Amz-Credential=AKIA%2F1&page=2",
     "https://feeds.example/x?api_key=***&X-Amz-Signature=***&X-Amz-Credential=***&page=2"),
    ("https://feeds.example/x?password=hunter2&Auth=a&session_id=s&secret=x&sig=y",
     "https://feeds.example/x?password=***&Auth=***&session_id=***&secret=***&sig=***"),
    ("https://u:p%40ss@feeds.example:8443/x?q=1#frag", "https://u:***@feeds.example:8443/x?q=1#frag"),
    ("https://feeds.example/x.xml?", "https://feeds.example/x.xml?"),   # untouched, byte for byte
    ("https://feeds.example/x.xml?token=", "https://feeds.example/x.xml?token="),
    ("/srv/feeds/world.json", "/srv/feeds/world.json"),
    ("http://user:hunter2@[::1/feed", "http://***@[::1/feed"),       # not parsable: the userinfo still goes
])
def test_credentials_in_a_url_are_masked_and_the_rest_kept(url, shown):
    assert mask_url(url) == shown


QUERY = "?token=tok-5ecr3t&api_key=k3y-5ecr3t&X-Amz-Signature=sig-5ecr3t&page=1"


@pytest.fixture
def feeds():
    server, served = serve()
    served.add("/feed.json" + QUERY, json.dumps([STORY, {"id": "bad"}]), "application/json")
    served.add("/feed.json", json.dumps([STORY]), "application/json")
    yield served
    server.shutdown()


def _secret_url(served, path="/feed.json") -> str:
    return served.base.replace("://", "://editor:hunter2@") + path + QUERY


def _no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_sources_commands_never_print_a_feed_urls_credentials(run_cli, feeds):
    assert run_cli("db", "upgrade").code == 0
    url = _secret_url(feeds)
    shown = mask_url(url)
    assert shown == feeds.base.replace("://", "://editor:***@") + \
        "/feed.json?token=***&api_key=***&X-Amz-Signature=***&page=1"
    outputs = []

    added = run_cli("sources", "add", url, env=ALLOW)
    assert added.code == 0 and added.out.startswith(f"added {shown};")
    again = run_cli("sources", "add", url)
    assert again.code == 2 and f"{shown} is already a source" in again.err
    polled = run_cli("sources", "poll")
    assert polled.code == 1, polled.err
    assert polled.out.strip() == f"{shown}: 1 added, 0 updated, 0 unchanged, 1 rejected"
    assert polled.err.startswith(f"rejected: {shown}: item 2")
    table = run_cli("sources", "list")
    assert shown in table.out
    [row] = json.loads(run_cli("sources", "list", "--json").out)
    assert row["url"] == shown
    imported = run_cli("stories", "import", url)
    assert imported.err.startswith(f"rejected: {shown}: item 2")
    feeds.add("/feed.json" + QUERY, "gone", status=404)
    failed = run_cli("sources", "poll")
    assert failed.err.startswith(f"{shown}: failed: HTTP 404 Not Found (1 in a row;")
    missing = run_cli("sources", "remove", url + "&x=1")
    assert missing.code == 2 and f"sources: {shown}" in missing.err
    # The URL as shown is enough to remove it: a script can take it from `list --json`.
    removed = run_cli("sources", "remove", shown)
    assert (removed.code, removed.out.strip()) == (0, f"removed {shown}; its stories stay")
    outputs += [added, again, polled, table, imported, failed, missing, removed]
    _no_secret(*(r.out + r.err for r in outputs))


def test_config_masks_the_credentials_of_config_file_sources(run_cli, tmp_path):
    config = tmp_path / "newsletter.toml"
    config.write_text('[[sources]]\nurl = "https://editor:hunter2@feeds.example/f.xml?token=tok-5ecr3t"\n'
                      'region = "RU"\n')
    env = {"NEWSLETTER_CONFIG": str(config)}
    text = run_cli("config", env=env)
    data = json.loads(run_cli("config", "--json", env=env).out)
    [sources] = [row for row in data["settings"] if row["setting"] == "sources"]
    assert sources["value"] == [{"url": "https://editor:***@feeds.example/f.xml?token=***", "region": "RU"}]
    assert "https://editor:***@feeds.example/f.xml?token=***" in text.out
    _no_secret(text.out, text.err, json.dumps(data))


def test_the_workers_log_lines_mask_a_feed_urls_credentials(engine, settings, feeds, caplog):
    url = _secret_url(feeds)
    add_source(engine, url, region="RU")
    add_source(engine, _secret_url(feeds, "/missing.json"))
    local = settings.model_copy(update={"fetch_allow_private": True})
    with caplog.at_level(logging.INFO):
        polled = reconcile(engine, local, lambda e, ids: None, datetime(2025, 1, 29, 12, tzinfo=UTC),
                           weekly=False).polled
    assert [r.outcome for r in polled] == ["read", "failed"]
    assert f"source {mask_url(url)}: 1 added" in caplog.text
    assert "HTTP 404" in caplog.text
    _no_secret(caplog.text)


def test_sources_add_refuses_a_url_every_poll_would_refuse(run_cli, feeds):
    assert run_cli("db", "upgrade").code == 0
    port = feeds.base.rsplit(":", 1)[1]
    for host in ("127.0.0.1", "localhost", "[::1]", "[64:ff9b::7f00:1]", "[2002:a9fe:a9fe::1]", "169.254.169.254"):
        url = f"http://editor:hunter2@{host}:{port}/feed.json"
        refused = run_cli("sources", "add", url)
        assert refused.code == 2, refused.out
        assert refused.err.startswith(f"error: not added: {mask_url(url)}: refused to connect to "), refused.err
        assert "not a public address (set NEWSLETTER_FETCH_ALLOW_PRIVATE=true" in refused.err
        _no_secret(refused.err)
    for bad_url in ("http://[::1/feed", "https://editor:hunter2@xn--/feed"):
        bad = run_cli("sources", "add", bad_url)
        assert bad.code == 2 and f"not added: {mask_url(bad_url)}: invalid URL" in bad.err
        _no_secret(bad.err)
    assert feeds.hits == []  # nothing was fetched to decide
    assert run_cli("sources", "list").out.startswith("no sources yet")
    allowed = run_cli("sources", "add", f"http://127.0.0.1:{port}/feed.json", env=ALLOW)
    assert allowed.code == 0 and allowed.err == ""


def test_sources_add_warns_about_a_host_that_does_not_resolve_and_adds_it(run_cli):
    assert run_cli("db", "upgrade").code == 0
    added = run_cli("sources", "add", "https://feed.invalid/feed.xml")
    assert added.code == 0 and added.out.startswith("added https://feed.invalid/feed.xml;")
    assert added.err.startswith("warning: https://feed.invalid/feed.xml: cannot resolve feed.invalid: ")
    assert added.err.rstrip().endswith("added anyway, the worker will try it")


def test_sources_list_times_carry_their_offset_in_the_table_and_the_json(run_cli, engine):
    assert run_cli("db", "upgrade").code == 0
    add_source(engine, "/srv/feeds/world.json")
    with session_scope(engine) as session:
        row = session.scalar(select(Source))
        row.last_success_at = datetime(2025, 1, 29, 12, 0, tzinfo=UTC)
        row.next_poll_at = datetime(2025, 7, 1, 12, 30, tzinfo=UTC)
    env = {"NEWSLETTER_TIMEZONE": "Europe/Berlin"}
    table = run_cli("sources", "list", env=env).out
    # Winter and summer time: each time with its own offset.
    assert "2025-01-29 13:00+01:00" in table and "2025-07-01 14:30+02:00" in table
    [listed] = json.loads(run_cli("sources", "list", "--json", env=env).out)
    assert (listed["last_success"], listed["next_poll"]) == ("2025-01-29T12:00:00+00:00", "2025-07-01T12:30:00+00:00")


@pytest.mark.slow  # a real Celery worker process
def test_a_real_worker_polls_a_bomb_and_a_feed_with_credentials_logs_no_secret_and_lives(
        engine, feeds, start_worker, worker_env):
    from tests.support.worker import wait_for
    from tests.test_ingest_compression import GIB, _gzip_of_zeros
    from worker.celery_app import create_app
    from worker.settings import load_settings

    bomb = feeds.add("/bomb.xml" + QUERY, _gzip_of_zeros(GIB), headers={"Content-Encoding": "gzip"})
    add_source(engine, bomb.replace("://", "://editor:hunter2@"))
    add_source(engine, _secret_url(feeds))
    env = {"NEWSLETTER_FETCH_ALLOW_PRIVATE": "true"}
    worker = start_worker(**env)
    app = create_app(load_settings({**worker_env, **env}))

    def polled() -> list[Source]:
        with session_scope(engine) as session:
            rows = list(session.scalars(select(Source).order_by(Source.id)))
        return rows if all(r.last_polled_at for r in rows) else []

    app.send_task("worker.tasks.reconcile")
    bombed, good = wait_for(polled, what="both sources polled by the worker", timeout=90)
    assert (bombed.consecutive_failures, bombed.last_error) == (
        1, "response decodes to over the 10485760 byte limit (gzip)")
    assert (good.consecutive_failures, good.items_added) == (0, 1)
    wait_for(lambda: "reconcile: " in worker.output(), what="the reconcile task's summary line")
    log = worker.output()
    assert f"source {mask_url(_secret_url(feeds))}: 1 added" in log
    assert "HTTP Request: GET http://editor:***@127.0.0.1" in log  # httpx's own line, masked
    _no_secret(log)
    assert "MemoryError" not in log and "Traceback" not in log
    # The worker is still there and still takes tasks.
    app.send_task("worker.tasks.reconcile")
    wait_for(lambda: worker.output().count("reconcile: ") == 2, what="a second reconcile")
    assert worker.proc.poll() is None
