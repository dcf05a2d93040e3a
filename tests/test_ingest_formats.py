"""Each source format from a file and from a real HTTP server; re-imports are idempotent."""

import json
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from tests.conftest import EXAMPLES
from tests.support.http import ConnectionLog, serve
from worker.ingest import import_sources
from worker.ingest.fetch import MAX_SOURCE_BYTES
from worker.store.db import session_scope
from worker.store.models import Story

RSS = """<?xml version="1.0"?>
<rss version="2.0"><channel><title>Wire</title><link>https://w.example/</link><description>d</description>
<item><title>Kyiv grid repaired</title><link>https://w.example/a</link><guid>wire-a</guid>
<description>&lt;p&gt;Crews restored power.&lt;/p&gt;</description>
<pubDate>Tue, 28 Jan 2025 10:00:00 +0200</pubDate><category>UA</category><category>Energy</category></item>
<item><title>No guid here</title><link>https://w.example/b</link>
<description>Plain summary</description><pubDate>Wed, 29 Jan 2025 08:00:00 GMT</pubDate>
<category>PL</category><category>UA</category></item>
</channel></rss>"""

ATOM = """<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom"><title>Euro desk</title><id>urn:euro</id>
<updated>2025-01-30T12:00:00Z</updated>
<entry><title>Berlin budget talks</title><id>urn:euro:1</id><link href="https://e.example/1"/>
<updated>2025-01-30T12:00:00Z</updated><published>2025-01-30T11:00:00+01:00</published>
<summary type="html">&lt;b&gt;Coalition&lt;/b&gt; talks resume.</summary><category term="DE"/></entry>
</feed>"""

JSON_STORIES = [
    {"id": "j-1", "url": "https://j.example/1", "title": "Paris transit strike", "summary": "Metro lines shut.",
     "regions": ["FR"], "published_at": "2025-01-28T07:00:00Z", "source": "wire", "image_url": None},
    {"url": "https://j.example/2", "title": "London fog delays flights", "summary": "",
     "regions": ["GB"], "published_at": "2025-01-29T07:00:00+00:00", "source": "wire", "image_url": None},
]


def _stories(engine):
    with session_scope(engine) as session:
        return {s.guid: s for s in session.scalars(sa.select(Story))}


FORMATS = {
    "rss": (RSS, "application/rss+xml", {"wire-a": ("UA",), "https://w.example/b": ("PL", "UA")}),
    "atom": (ATOM, "application/atom+xml", {"urn:euro:1": ("DE",)}),
    "json": (json.dumps(JSON_STORIES), "application/json", {"j-1": ("FR",), "https://j.example/2": ("GB",)}),
    "jsonl": ("\n".join(json.dumps(s) for s in JSON_STORIES) + "\n", "application/x-ndjson",
              {"j-1": ("FR",), "https://j.example/2": ("GB",)}),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_it_imports_each_format_from_a_file(engine, tmp_path, fmt):
    body, _, expected = FORMATS[fmt]
    path = tmp_path / f"source.{fmt}"
    path.write_text(body, encoding="utf-8")
    report = import_sources(engine, [str(path)])
    assert (report.added, report.updated, report.rejected) == (len(expected), 0, [])
    stored = _stories(engine)
    assert {g: tuple(s.region_codes) for g, s in stored.items()} == expected


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_it_imports_each_format_from_a_url_and_connects_nowhere_else(engine, fmt):
    body, ctype, expected = FORMATS[fmt]
    server, served = serve()
    try:
        url = served.add(f"/feed.{fmt}", body, ctype)
        with ConnectionLog() as log:
            report = import_sources(engine, [url], allow_private=True)  # the test server is on loopback
    finally:
        server.shutdown()
    assert report.added == len(expected) and not report.rejected
    assert served.hits == [f"/feed.{fmt}"]
    port = server.server_address[1]
    external = [a for a in log.addresses if not (isinstance(a, tuple) and a[:2] == ("127.0.0.1", port))]
    # Only the database may be connected to besides the feed server.
    assert all(isinstance(a, str) or a[1] == 5432 for a in external), external


def test_rss_dates_are_converted_to_utc(engine, tmp_path):
    path = tmp_path / "f.rss"
    path.write_text(RSS)
    import_sources(engine, [str(path)])
    assert _stories(engine)["wire-a"].published_at == datetime(2025, 1, 28, 8, 0, tzinfo=UTC)


def test_reimport_is_idempotent_and_updates_changed_fields(engine, tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(JSON_STORIES))
    first = import_sources(engine, [str(path)])
    again = import_sources(engine, [str(path)])
    assert (first.added, first.updated, first.unchanged) == (2, 0, 0)
    assert (again.added, again.updated, again.unchanged) == (0, 0, 2)
    changed = [dict(JSON_STORIES[0], title="Paris transit strike ends", regions=["FR", "DE"]), JSON_STORIES[1]]
    path.write_text(json.dumps(changed))
    third = import_sources(engine, [str(path)])
    assert (third.added, third.updated, third.unchanged) == (0, 1, 1)
    story = _stories(engine)["j-1"]
    assert story.title == "Paris transit strike ends" and story.region_codes == ["FR", "DE"]
    assert len(_stories(engine)) == 2


def test_the_bundled_examples_import_cleanly(engine):
    sources = [str(EXAMPLES / "stories.json"), str(EXAMPLES / "feeds" / "world.rss"),
               str(EXAMPLES / "feeds" / "europe.atom")]
    report = import_sources(engine, sources)
    assert report.rejected == [] and report.added >= 55


def test_region_option_fills_items_without_regions(engine, tmp_path):
    item = dict(JSON_STORIES[0], regions=[])
    path = tmp_path / "s.json"
    path.write_text(json.dumps([item]))
    assert [r.reason for r in import_sources(engine, [str(path)]).rejected] == [
        "no region (tag the item or pass --region)"
    ]
    assert import_sources(engine, [str(path)], default_region="RU").added == 1
    assert _stories(engine)["j-1"].region_codes == ["RU"]


@pytest.mark.parametrize(
    ("route", "status", "body", "reason"),
    [
        ("/missing", None, None, "HTTP 404 Not Found"),
        ("/garbage", 200, b"hello world", "not RSS, Atom, a JSON array or JSON Lines"),
        ("/broken.json", 200, b"[{\"id\": ", "malformed JSON"),
    ],
)
def test_unusable_urls_are_reported_per_source(engine, route, status, body, reason):
    server, served = serve()
    try:
        if status:
            served.add(route, body, "text/plain", status)
        good = served.add("/good.json", json.dumps(JSON_STORIES), "application/json")
        report = import_sources(engine, [served.base + route, good], allow_private=True)
    finally:
        server.shutdown()
    assert report.added == 2
    assert len(report.rejected) == 1 and report.rejected[0].reason.startswith(reason)


def test_only_http_urls_and_files_are_sources(engine, tmp_path):
    report = import_sources(engine, ["ftp://x.example/feed", "file:///etc/passwd", str(tmp_path / "nope.json")])
    assert [r.reason for r in report.rejected] == [
        "unsupported URL scheme 'ftp': only http(s) URLs and file paths",
        "unsupported URL scheme 'file': only http(s) URLs and file paths",
        "cannot read file: No such file or directory",
    ]


def test_oversized_responses_are_refused(engine):
    server, served = serve()
    try:
        url = served.add("/big.json", b"[" + b" " * (MAX_SOURCE_BYTES + 1) + b"]", "application/json")
        report = import_sources(engine, [url], allow_private=True)
    finally:
        server.shutdown()
    assert report.rejected[0].reason == f"response is {MAX_SOURCE_BYTES + 3} bytes, over the {MAX_SOURCE_BYTES} byte limit"
