"""Sources: polled with conditional GET over the hardened fetch path, their health and
backoff, the beat tick and the poll just before a weekly edition, the CLI and [[sources]]."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

from worker.delivery.schedule import ensure_weekly_edition, reconcile
from worker.ingest.fetch import SourceError, fetch_source
from worker.ingest.sources import add_source, list_sources, poll_all_sources, poll_due_sources
from worker.store.db import session_scope
from worker.store.models import Source, Story, StoryRegion

T0 = datetime(2025, 1, 29, 12, 0, tzinfo=UTC)
LAST_MODIFIED = "Wed, 29 Jan 2025 11:00:00 GMT"


@dataclass
class Feed:
    """A feed server that answers conditional GETs as a real one does."""

    items: list[dict] = field(default_factory=list)
    status: int = 200
    body_override: bytes | None = None
    requests: list[dict[str, str]] = field(default_factory=list)
    base: str = ""

    @property
    def etag(self) -> str:
        return f'"v{len(self.items)}-{abs(hash(json.dumps(self.items, sort_keys=True))) % 10**8}"'

    @property
    def url(self) -> str:
        return self.base + "/feed.json"

    def story(self, n: int, published: str, **over) -> None:
        self.items.append({"id": f"src-{n}", "url": f"https://news.example/src/{n}", "title": f"Story {n}",
                           "summary": f"Summary {n}.", "published_at": published, **over})


@pytest.fixture
def feed():
    state = Feed()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            state.requests.append({k.lower(): v for k, v in self.headers.items()})
            if state.status != 200:
                body = b"broken"
                self.send_response(state.status)
            elif self.headers.get("If-None-Match") == state.etag:
                self.send_response(304)
                self.send_header("ETag", state.etag)
                self.end_headers()
                return
            else:
                body = state.body_override or json.dumps(state.items).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("ETag", state.etag)
                self.send_header("Last-Modified", LAST_MODIFIED)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def local(settings):
    """Settings that let the fetcher reach the test's own server on 127.0.0.1."""
    return settings.model_copy(update={"fetch_allow_private": True})


def _stories(engine) -> dict[str, list[str]]:
    with session_scope(engine) as session:
        return {s.guid: s.region_codes for s in session.scalars(select(Story))}


def _source(engine, url) -> Source:
    with session_scope(engine) as session:
        return session.scalar(select(Source).where(Source.url == url))


def test_fetch_sends_the_validators_and_reports_304(feed):
    feed.story(1, "2025-01-28T10:00:00Z", regions=["RU"])
    first = fetch_source(feed.url, allow_private=True)
    assert json.loads(first.body)[0]["id"] == "src-1"
    assert (first.etag, first.last_modified) == (feed.etag, LAST_MODIFIED)
    assert "if-none-match" not in feed.requests[0]

    again = fetch_source(feed.url, etag=first.etag, last_modified=first.last_modified, allow_private=True)
    assert again.not_modified and again.body is None and again.etag == feed.etag
    assert len(feed.requests) == 2
    assert feed.requests[1]["if-none-match"] == feed.etag
    assert feed.requests[1]["if-modified-since"] == LAST_MODIFIED


def test_fetch_asks_only_for_the_content_codings_it_decodes(feed):
    fetch_source(feed.url, allow_private=True)
    assert feed.requests[0]["accept-encoding"] == "gzip, deflate"


def test_conditional_fetch_keeps_the_address_guard(feed):
    with pytest.raises(SourceError, match="not a public address"):
        fetch_source(feed.url, etag='"x"', last_modified=LAST_MODIFIED)
    assert feed.requests == []


def test_a_file_source_is_read_again_only_when_it_changed(tmp_path):
    path = tmp_path / "feed.json"
    path.write_text("[]")
    first = fetch_source(str(path))
    assert first.body == b"[]" and first.last_modified
    assert fetch_source(str(path), last_modified=first.last_modified).not_modified
    path.write_text('[{"x": 1}]')
    assert fetch_source(str(path), last_modified=first.last_modified).body == b'[{"x": 1}]'


def test_an_unchanged_feed_costs_one_304_and_adds_nothing(engine, local, feed):
    feed.story(1, "2025-01-28T10:00:00Z")
    feed.story(2, "2025-01-28T11:00:00Z", regions=["UA"])
    add_source(engine, feed.url, region="RU")

    [first] = poll_all_sources(engine, local, T0)
    assert (first.outcome, first.added, first.rejected) == ("read", 2, [])
    assert _stories(engine) == {"src-1": ["RU"], "src-2": ["UA"]}
    row = _source(engine, feed.url)
    assert (row.etag, row.last_modified, row.items_added) == (feed.etag, LAST_MODIFIED, 2)
    assert row.last_success_at == T0 and row.next_poll_at == T0 + timedelta(minutes=30)

    [second] = poll_all_sources(engine, local, T0 + timedelta(minutes=30))
    assert (second.outcome, second.added, second.updated) == ("unchanged", 0, 0)
    assert len(feed.requests) == 2 and feed.requests[1]["if-none-match"] == feed.etag
    row = _source(engine, feed.url)
    assert row.items_added == 2 and row.last_success_at == T0 + timedelta(minutes=30)
    assert len(_stories(engine)) == 2

    feed.story(3, "2025-01-29T09:00:00Z")
    [third] = poll_all_sources(engine, local, T0 + timedelta(hours=1))
    assert (third.outcome, third.added, third.unchanged) == ("read", 1, 2)
    assert _source(engine, feed.url).items_added == 3


def test_a_failing_source_backs_off_and_says_why(engine, local, feed):
    add_source(engine, feed.url, region="RU")
    feed.status = 500
    [failed] = poll_due_sources(engine, local, T0)
    assert failed.outcome == "failed" and failed.error == "HTTP 500 Internal Server Error"
    row = _source(engine, feed.url)
    assert (row.consecutive_failures, row.last_error, row.last_error_at) == (1, "HTTP 500 Internal Server Error", T0)
    assert row.next_poll_at == T0 + timedelta(minutes=30) and row.last_success_at is None

    assert poll_due_sources(engine, local, T0 + timedelta(minutes=29)) == []  # not due: no request
    assert len(feed.requests) == 1
    [again] = poll_due_sources(engine, local, T0 + timedelta(minutes=30))
    assert again.failures == 2
    assert _source(engine, feed.url).next_poll_at == T0 + timedelta(minutes=90)  # 30 + 60
    assert "2 in a row" in str(again)

    later = T0 + timedelta(minutes=90)
    feed.status = 200
    feed.story(1, "2025-01-29T10:00:00Z")
    [ok] = poll_due_sources(engine, local, later)
    assert (ok.outcome, ok.added) == ("read", 1)
    row = _source(engine, feed.url)
    assert (row.consecutive_failures, row.last_error, row.last_success_at) == (0, None, later)
    assert row.next_poll_at == later + timedelta(minutes=30)


def test_a_body_that_is_not_a_feed_is_a_failure_and_keeps_no_validators(engine, local, feed):
    add_source(engine, feed.url)
    feed.body_override = b"<html>maintenance</html>"
    [result] = poll_all_sources(engine, local, T0)
    assert (result.outcome, result.error, result.rejected) == ("failed", "not an RSS or Atom feed", [])
    row = _source(engine, feed.url)
    assert row.etag is None and row.consecutive_failures == 1
    feed.body_override = None
    [result] = poll_all_sources(engine, local, T0 + timedelta(minutes=1))
    assert result.outcome == "read" and "if-none-match" not in feed.requests[-1]


def test_the_beat_tick_polls_at_the_interval(engine, local, feed):
    feed.story(1, "2025-01-28T10:00:00Z")
    add_source(engine, feed.url, region="RU")
    settings = local.model_copy(update={"sources_poll_minutes": 15})
    published = []

    def tick(at):
        return reconcile(engine, settings, lambda e, ids: published.append(ids), at, weekly=False).polled

    assert [r.outcome for r in tick(T0)] == ["read"]
    assert tick(T0 + timedelta(minutes=14)) == []
    assert [r.outcome for r in tick(T0 + timedelta(minutes=15))] == ["unchanged"]
    assert len(feed.requests) == 2
    assert list(_stories(engine)) == ["src-1"]


def test_every_source_is_polled_just_before_the_weekly_edition_is_planned(engine, local, feed):
    from tests.support.data import add_subscribers

    add_subscribers(engine, 2, sets=[("RU",)])
    feed.story(1, "2025-01-28T10:00:00Z")
    add_source(engine, feed.url, region="RU")
    settings = local.model_copy(update={"timezone": "UTC", "hold_stale_days": 0})
    poll_all_sources(engine, settings, datetime(2025, 2, 2, 23, 0, tzinfo=UTC))  # not due again until 23:30
    feed.story(2, "2025-02-02T23:30:00Z")  # the week's last story, after the last regular poll
    slot = datetime(2025, 2, 3, 7, 0, 30, tzinfo=UTC)
    with session_scope(engine) as session:
        session.execute(Source.__table__.update().values(next_poll_at=slot + timedelta(hours=1)))
    due = ensure_weekly_edition(engine, settings, slot)
    assert due.action == "planned" and len(feed.requests) == 2
    assert set(_stories(engine)) == {"src-1", "src-2"}


def test_sources_commands(run_cli, feed, tmp_path):
    env = {"NEWSLETTER_FETCH_ALLOW_PRIVATE": "true"}
    assert run_cli("db", "upgrade").code == 0
    feed.story(1, "2025-01-28T10:00:00Z")
    added = run_cli("sources", "add", feed.url, "--region", "ru", env=env)
    assert added.code == 0 and f"added {feed.url} (region RU)" in added.out
    assert run_cli("sources", "add", feed.url).code == 2

    polled = run_cli("sources", "poll")
    assert polled.code == 0, polled.err
    assert polled.out.strip() == f"{feed.url}: 1 added, 0 updated, 0 unchanged, 0 rejected"
    polled = run_cli("sources", "poll")
    assert polled.out.strip() == f"{feed.url}: not modified" and len(feed.requests) == 2

    listed = run_cli("sources", "list", "--json")
    [row] = json.loads(listed.out)
    assert (row["region"], row["items_added"], row["consecutive_failures"], row["origin"]) == ("RU", 1, 0, "cli")

    feed.status = 503
    failed = run_cli("sources", "poll")
    assert failed.code == 1
    assert "failed: HTTP 503 Service Unavailable (1 in a row; next try" in failed.err
    assert "HTTP 503" in run_cli("sources", "list").out

    assert run_cli("sources", "remove", feed.url).code == 0
    gone = run_cli("sources", "remove", feed.url)
    assert gone.code == 2 and "no source" in gone.err
    assert run_cli("sources", "add", "ftp://example.org/feed").code == 2
    assert run_cli("sources", "add", str(tmp_path / "missing.json")).code == 2
    assert run_cli("sources", "poll").out.startswith("no sources to poll")


def test_sources_from_the_config_file(run_cli, engine, tmp_path):
    path = tmp_path / "ua.json"
    path.write_text(json.dumps([{"id": "ua-1", "url": "https://news.example/ua/1", "title": "Kyiv",
                                 "published_at": "2025-01-28T10:00:00Z"}]))
    config = tmp_path / "newsletter.toml"
    config.write_text(f'[[sources]]\nurl = "{path}"\nregion = "ua"\n')
    env = {"NEWSLETTER_CONFIG": str(config)}
    polled = run_cli("sources", "poll", env=env)
    assert polled.code == 0 and "1 added" in polled.out
    assert _stories(engine) == {"ua-1": ["UA"]}
    assert run_cli("sources", "poll", env=env).out.strip() == f"{path}: not modified"
    [row] = json.loads(run_cli("sources", "list", "--json", env=env).out)
    assert (row["origin"], row["region"]) == ("config", "UA")
    refused = run_cli("sources", "remove", str(path), env=env)
    assert refused.code == 2 and "config file" in refused.err
    with session_scope(engine) as session:
        assert session.scalar(select(func.count()).select_from(StoryRegion)) == 1
    assert len(list_sources(engine)) == 1


def test_a_bad_sources_table_is_a_config_error(run_cli, tmp_path):
    config = tmp_path / "newsletter.toml"
    config.write_text('[[sources]]\nurl = "https://example.org/feed"\nregion = "XX"\n')
    result = run_cli("sources", "list", env={"NEWSLETTER_CONFIG": str(config)})
    assert result.code == 2 and "source 1: region" in result.err
