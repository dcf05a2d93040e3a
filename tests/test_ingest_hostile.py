"""Hostile and broken feed items: each has one exact outcome, and the rest are kept."""

import json

import sqlalchemy as sa

from tests.support.http import ConnectionLog
from worker.ingest import import_sources
from worker.store.db import session_scope
from worker.store.models import Story

BASE = {"url": "https://h.example/{n}", "summary": "ok", "regions": ["RU"],
        "published_at": "2025-01-28T10:00:00Z", "source": "wire", "image_url": None}


def _item(n, **fields):
    item = {k: (v.format(n=n) if isinstance(v, str) else v) for k, v in BASE.items()}
    item.update(id=f"h-{n}", title=f"Story {n}")
    item.update(fields)
    return item


def _import(engine, tmp_path, items):
    path = tmp_path / "hostile.json"
    path.write_text(json.dumps(items))
    with ConnectionLog() as log:
        report = import_sources(engine, [str(path)])
    with session_scope(engine) as session:
        stored = {s.guid: s for s in session.scalars(sa.select(Story))}
    return report, stored, log


def test_script_and_handlers_are_stripped_from_summaries(engine, tmp_path):
    report, stored, _ = _import(engine, tmp_path, [_item(1, summary=(
        '<p onclick="steal()">Hello <script>alert(1)</script><b>world</b></p>'
        '<img src="x" onerror="alert(2)"><a href="javascript:alert(3)">click</a>'
        '<a href="https://ok.example/x" style="color:red" target="_blank">fine</a>'
        '<a href="data:text/html;base64,PHNjcmlwdD4=">data</a><style>p{color:red}</style>'
    ))])
    assert report.added == 1 and not report.rejected
    story = stored["h-1"]
    assert story.summary_html == (
        '<p>Hello <b>world</b></p><a rel="noopener noreferrer">click</a>'
        '<a href="https://ok.example/x" rel="noopener noreferrer">fine</a>'
        '<a rel="noopener noreferrer">data</a>'
    )
    assert story.summary_text == "Hello world\n\nclickfinedata"


def test_remote_stylesheets_are_removed_and_never_fetched(engine, tmp_path):
    report, stored, log = _import(engine, tmp_path, [_item(2, summary=(
        '<link rel="stylesheet" href="http://169.254.169.254/latest/meta-data/">'
        '<p style="background:url(http://169.254.169.254/x)">Body</p>'
    ))])
    assert stored["h-2"].summary_html == "<p>Body</p>"
    assert all("169.254" not in str(a) for a in log.addresses)


def test_header_injection_in_titles_becomes_one_line(engine, tmp_path):
    _, stored, _ = _import(engine, tmp_path, [_item(3, title="Breaking\r\nBcc: victim@example.org\x00\u2028!")])
    assert stored["h-3"].title == "Breaking Bcc: victim@example.org !"


def test_template_syntax_in_titles_is_kept_literally(engine, tmp_path):
    _, stored, _ = _import(engine, tmp_path, [_item(4, title="{{ config }} {% debug %}", summary="{{ 7*7 }}")])
    assert stored["h-4"].title == "{{ config }} {% debug %}"
    assert stored["h-4"].summary_text == "{{ 7*7 }}"


def test_bad_items_are_rejected_with_position_and_reason_and_the_rest_kept(engine, tmp_path):
    items = [
        _item(1),
        _item(2, summary="x" * 1_048_576),
        _item(3, published_at=None),
        _item(4, published_at="2025-01-28T10:00:00"),
        _item(5, published_at="last Tuesday"),
        _item(1, title="Same guid again"),
        _item(6, regions=["XX"]),
        _item(7, title="  \r\n "),
        _item(8, url=None),
        _item(9, url="javascript:alert(1)"),
        _item(10, title="T" * 301),
        "not an object",
        _item(11, regions="RU"),
    ]
    report, stored, _ = _import(engine, tmp_path, items)
    path = tmp_path / "hostile.json"
    assert [str(r) for r in report.rejected] == [
        f"{path}: item 2: summary too long (1048576 > 20000 characters)",
        f"{path}: item 3: no usable date",
        f"{path}: item 4: published_at has no time zone (add Z or an offset)",
        f"{path}: item 5: published_at is not an ISO 8601 date: 'last Tuesday'",
        f"{path}: item 6: duplicate id 'h-1' (first at {path}: item 1)",
        f"{path}: item 7: unknown region code 'XX'",
        f"{path}: item 8: no title",
        f"{path}: item 9: no link",
        f"{path}: item 10: link is not an absolute http(s) URL: 'javascript:alert(1)'",
        f"{path}: item 11: title too long (301 > 300 characters)",
        f"{path}: item 12: not a JSON object",
    ]
    assert sorted(stored) == ["h-1", "h-11"]
    assert stored["h-1"].title == "Story 1"


def test_feed_items_with_unknown_region_categories_are_rejected(engine, tmp_path):
    feed = """<?xml version="1.0"?><rss version="2.0"><channel><title>W</title>
    <item><title>A</title><link>https://f.example/a</link><pubDate>Tue, 28 Jan 2025 10:00:00 GMT</pubDate>
    <category>XX</category></item>
    <item><title>B</title><link>https://f.example/b</link><pubDate>Tue, 28 Jan 2025 10:00:00 GMT</pubDate>
    <category>Politics</category></item>
    <item><title>C</title><link>https://f.example/c</link>
    <category>RU</category></item>
    <item><title>D &lt;b&gt;bold&lt;/b&gt;</title><link>https://f.example/d</link>
    <pubDate>Tue, 28 Jan 2025 10:00:00 GMT</pubDate><category>RU</category></item>
    </channel></rss>"""
    path = tmp_path / "f.rss"
    path.write_text(feed)
    report = import_sources(engine, [str(path)])
    assert [(r.position, r.reason) for r in report.rejected] == [
        ("entry 1", "unknown region code 'XX'"),
        ("entry 2", "no region (tag the item or pass --region)"),
        ("entry 3", "no usable date"),
    ]
    assert report.added == 1


def test_a_feed_that_is_not_xml_is_one_rejection_for_the_source(engine, tmp_path):
    bad = tmp_path / "broken.rss"
    bad.write_bytes(b"<<<>>>")
    html = tmp_path / "page.rss"
    html.write_text("<html><body>not a feed</body></html>")
    report = import_sources(engine, [str(bad), str(html)])
    assert report.added == 0
    assert [(r.position, r.reason) for r in report.rejected] == [
        ("", "malformed feed: <unknown>:2:1: not well-formed (invalid token)"),
        ("", "not an RSS or Atom feed"),
    ]


def test_a_truncated_feed_keeps_what_is_whole_and_rejects_the_rest(engine, tmp_path):
    path = tmp_path / "cut.rss"
    path.write_text("""<rss version="2.0"><channel><title>W</title>
    <item><title>Whole</title><link>https://f.example/w</link>
    <pubDate>Tue, 28 Jan 2025 10:00:00 GMT</pubDate><category>RU</category></item>
    <item><title>Cut""")
    report = import_sources(engine, [str(path)])
    assert report.added == 1
    assert [(r.position, r.reason) for r in report.rejected] == [("entry 2", "no title")]


def test_xml_external_entities_are_not_resolved(engine, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    feed = f"""<?xml version="1.0"?><!DOCTYPE rss [<!ENTITY xxe SYSTEM "file://{secret}">]>
    <rss version="2.0"><channel><title>W</title><item><title>A &xxe;</title>
    <link>https://f.example/a</link><pubDate>Tue, 28 Jan 2025 10:00:00 GMT</pubDate>
    <category>RU</category></item></channel></rss>"""
    path = tmp_path / "xxe.rss"
    path.write_text(feed)
    import_sources(engine, [str(path)])
    with session_scope(engine) as session:
        titles = list(session.scalars(sa.select(Story.title)))
    assert all("TOPSECRET" not in t for t in titles)
