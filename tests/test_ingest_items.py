"""One bad item is that item's rejection, never the run's: whatever a field holds, the
importer keeps the other items and the other sources, and says why it refused."""

import json
import os
import random

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.http import serve
from worker.ingest import import_sources
from worker.ingest.importer import MAX_REASON
from worker.store.db import session_scope
from worker.store.models import Story

GOOD = {"url": "https://ok.example/{n}", "title": "Story {n}", "summary": "ok", "regions": ["RU"],
        "published_at": "2025-01-28T10:00:00Z", "source": "wire", "image_url": None}
FIELDS = ("id", "url", "title", "summary", "regions", "published_at", "source", "image_url")
# Incompressible 4-byte characters: PostgreSQL cannot index 1024 of them (4 KB > its 2704-byte btree limit).
WIDE_ID = "".join(chr(random.Random(0).randrange(0x20000, 0x2A6DF)) for _ in range(1024))


def good(n, **fields):
    item = {k: (v.format(n=n) if isinstance(v, str) else v) for k, v in GOOD.items()}
    item.update(id=f"good-{n}")
    item.update(fields)
    return item


def stored(engine):
    with session_scope(engine) as session:
        return {s.guid: s for s in session.scalars(sa.select(Story))}


def reasons(report):
    return [(r.position, r.reason) for r in report.rejected]


def assert_sane(report):
    """Every rejection says where and why, on one short line, and none is a crash in disguise."""
    for r in report.rejected:
        assert r.reason and "\n" not in r.reason and len(r.reason) <= MAX_REASON, r
        assert "internal error" not in r.reason, r


REJECTED = [
    ("date past year 9999 once in UTC", {"published_at": "9999-12-31T23:59:59-14:00"},
     "published_at is out of range"),
    ("date before year 1 once in UTC", {"published_at": "0001-01-01T00:00:00+14:00"},
     "published_at is out of range"),
    ("year 99999", {"published_at": "99999-01-01T00:00:00Z"},
     "published_at is not an ISO 8601 date: '99999-01-01T00:00:00Z'"),
    ("NaN date", {"published_at": float("nan")}, "no usable date"),
    ("infinite date", {"published_at": float("inf")}, "no usable date"),
    ("number date", {"published_at": 1738058400}, "no usable date"),
    ("unclosed IPv6 bracket in the link", {"url": "http://[::1/story"},
     "link is not a valid URL: 'http://[::1/story'"),
    ("port out of range", {"url": "https://ok.example:99999/x"},
     "link is not a valid URL: 'https://ok.example:99999/x'"),
    ("no host", {"url": "https://:443/x"}, "link is not an absolute http(s) URL: 'https://:443/x'"),
    ("unclosed bracket in the image", {"image_url": "https://[x/a.png"},
     "image_url is not a valid URL: 'https://[x/a.png'"),
    ("lone surrogate in the title", {"title": "Bad \ud800 title"}, "title is not valid Unicode (a lone surrogate)"),
    ("lone surrogate in the summary", {"summary": "\udfff"}, "summary is not valid Unicode (a lone surrogate)"),
    ("lone surrogate in the id", {"id": "x\ud800"}, "id is not valid Unicode (a lone surrogate)"),
    ("lone surrogate in the source", {"source": "\ud800"}, "source is not valid Unicode (a lone surrogate)"),
    ("lone surrogate in the link", {"url": "https://ok.example/\ud800"}, "url is not valid Unicode (a lone surrogate)"),
    ("id too wide for PostgreSQL's index", {"id": WIDE_ID}, "id too long (4096 > 1024 bytes)"),
    ("regions nested in a list", {"regions": [["RU"]]}, "regions must be a list of codes"),
    ("regions with a number", {"regions": ["RU", 7]}, "regions must be a list of codes"),
    ("regions as an object", {"regions": {"RU": True}}, "regions must be a list of codes"),
    ("title is a boolean", {"title": True}, "title must be text"),
    ("link is a list", {"url": ["https://ok.example/1"]}, "url must be text"),
    ("summary is a number", {"summary": 1e308}, "summary must be text"),
]


@pytest.mark.parametrize(("fields", "reason"), [c[1:] for c in REJECTED], ids=[c[0] for c in REJECTED])
def test_a_bad_field_rejects_its_item_and_keeps_the_rest(engine, tmp_path, fields, reason):
    path = tmp_path / "items.json"
    path.write_text(json.dumps([good(1), good(2, **fields), good(3)]))
    report = import_sources(engine, [str(path)])
    assert reasons(report) == [("item 2", reason)]
    assert sorted(stored(engine)) == ["good-1", "good-3"]


KEPT = [
    ("NUL in the summary", {"summary": "a\x00b"}, "summary_html", "ab"),
    ("NUL in the title", {"title": "a\x00b"}, "title", "a b"),
    ("NUL in the source", {"source": "wire\x00"}, "source", "wire"),
    ("blank id falls back to the link", {"id": " \t "}, "guid", "https://ok.example/2"),
    ("deeply nested summary markup", {"summary": "<b>" * 5000 + "x"}, "summary_text", "x"),
    ("line separator inside text", {"title": "a\u2028b"}, "title", "a b"),
]


@pytest.mark.parametrize(("fields", "column", "value"), [c[1:] for c in KEPT], ids=[c[0] for c in KEPT])
def test_odd_but_harmless_fields_are_stored_clean(engine, tmp_path, fields, column, value):
    path = tmp_path / "items.json"
    path.write_text(json.dumps([good(1), good(2, **fields)]))
    report = import_sources(engine, [str(path)])
    assert report.rejected == [] and report.added == 2
    story = next(s for s in stored(engine).values() if s.url == "https://ok.example/2")
    assert getattr(story, column) == value


def test_a_huge_bad_value_gives_a_short_reason(engine, tmp_path):
    path = tmp_path / "items.json"
    path.write_text(json.dumps([good(1, regions="X" * 1_000_000), good(2, regions=["R\x1b[31mU"])]))
    report = import_sources(engine, [str(path)])
    assert_sane(report)
    first, second = (r.reason for r in report.rejected)
    assert first.startswith("unknown region code 'XXXX")
    assert second == "unknown region code 'R\\x1b[31mU'"


def _jsonl(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def test_json_lines_reject_only_the_bad_line(engine, tmp_path):
    ok = [json.dumps(good(n)).encode() for n in range(5)]
    path = tmp_path / "items.jsonl"
    path.write_bytes(_jsonl(
        ok[0],
        b'{"title": "cut short',
        ok[1],
        json.dumps(good(9, published_at="BIG")).encode().replace(b'"BIG"', b"9" * 5000),
        json.dumps(good(2, title="bad \xff byte")).encode().replace(b"\\u00ff", b"\xff"),
        # U+2028 is legal inside a JSON string and is not a line break in JSON Lines.
        json.dumps(good(3, summary="para\u2028graph"), ensure_ascii=False).encode(),
        b'{"id": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        ok[4],
    ))
    report = import_sources(engine, [str(path)])
    assert_sane(report)
    got = reasons(report)
    assert [p for p, _ in got] == ["line 2", "line 4", "line 5", "line 7"]
    assert got[0][1].startswith("malformed JSON")
    assert got[1][1] == "no usable date"
    assert got[2][1].startswith("not UTF-8")
    assert got[3][1] == "JSON nested too deeply"
    assert sorted(stored(engine)) == ["good-0", "good-1", "good-3", "good-4"]


def test_a_json_array_too_deep_to_parse_is_that_sources_rejection(engine, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_bytes(b"[" + b"[" * 100_000 + b"]" * 100_000 + b"]")
    big = tmp_path / "bignum.json"
    big.write_text(json.dumps([good(6, published_at="BIG"), good(7)]).replace('"BIG"', "9" * 5000))
    after = tmp_path / "after.json"
    after.write_text(json.dumps([good(8)]))
    report = import_sources(engine, [str(deep), str(big), str(after)])
    assert_sane(report)
    # Too deep is the source's; a number too long for Python's int is only its item's.
    assert [(r.source, r.position, r.reason) for r in report.rejected] == [
        (str(deep), "", "JSON nested too deeply"),
        (str(big), "item 1", "no usable date"),
    ]
    assert sorted(stored(engine)) == ["good-7", "good-8"]


def _rss(*items: str) -> str:
    return ('<?xml version="1.0"?><rss version="2.0"><channel><title>W</title>'
            + "".join(items) + "</channel></rss>")


def _rss_item(n: int, *, date="Tue, 28 Jan 2025 10:00:00 GMT", title=None, link=None, extra="") -> str:
    return (f"<item><title>{title or f'Feed {n}'}</title><link>{link or f'https://f.example/{n}'}</link>"
            f"<pubDate>{date}</pubDate><category>RU</category>{extra}</item>")


def _atom(*entries: str) -> str:
    return '<feed xmlns="http://www.w3.org/2005/Atom"><title>E</title><id>urn:e</id>' + "".join(entries) + "</feed>"


def _atom_entry(n: int, updated: str) -> str:
    return (f'<entry><title>Atom {n}</title><id>urn:e:{n}</id><link href="https://e.example/{n}"/>'
            f'<updated>{updated}</updated><category term="DE"/></entry>')


FEEDS = [
    ("atom year 0", _atom(_atom_entry(1, "2025-01-30T12:00:00Z"), _atom_entry(2, "0000-00-00T00:00:00Z"),
                          _atom_entry(3, "2025-01-30T12:00:00Z")),
     [("entry 2", "published_at is out of range")], ["urn:e:1", "urn:e:3"]),
    ("atom past 9999", _atom(_atom_entry(1, "2025-01-30T12:00:00Z"), _atom_entry(2, "9999-12-31T23:59:59-23:59")),
     [("entry 2", "published_at is out of range")], ["urn:e:1"]),
    ("rss surrogate character reference", _rss(_rss_item(1, title="Bad &#xD800; ref"), _rss_item(2)),
     [], ["https://f.example/1", "https://f.example/2"]),
    ("rss character reference past Unicode", _rss(_rss_item(1, title="&#99999999999999999999;"), _rss_item(2)),
     [], ["https://f.example/1", "https://f.example/2"]),
    ("rss link with an unclosed bracket", _rss(_rss_item(1, link="http://[::1/x"), _rss_item(2)),
     [("entry 1", "link is not a valid URL: 'http://[::1/x'")], ["https://f.example/2"]),
    ("rss enclosure with a bad port", _rss(_rss_item(1, extra='<enclosure url="https://i.example:0x1/a.png" '
                                                               'type="image/png" length="1"/>'), _rss_item(2)),
     [("entry 1", "image_url is not a valid URL: 'https://i.example:0x1/a.png'")], ["https://f.example/2"]),
]


@pytest.mark.parametrize(("feed", "rejected", "kept"), [c[1:] for c in FEEDS], ids=[c[0] for c in FEEDS])
def test_a_bad_feed_entry_rejects_only_that_entry(engine, tmp_path, feed, rejected, kept):
    path = tmp_path / "feed.xml"
    path.write_text(feed)
    report = import_sources(engine, [str(path)])
    assert_sane(report)
    assert reasons(report) == rejected
    assert sorted(stored(engine)) == kept


def test_a_replaced_character_reference_becomes_the_replacement_character(engine, tmp_path):
    path = tmp_path / "feed.xml"
    path.write_text(_rss(_rss_item(1, title="Bad &#xD800; ref &#x1F600;")))
    import_sources(engine, [str(path)])
    assert stored(engine)["https://f.example/1"].title == "Bad \ufffd ref \U0001F600"


def test_a_source_that_cannot_even_be_named_is_its_own_rejection(engine, tmp_path):
    after = tmp_path / "after.json"
    after.write_text(json.dumps([good(1)]))
    sources = ["http://[::1/feed", "https://xn--/feed", "http://../feed", "https://" + "a" * 300 + ".example/",
               "feed\x00.json", str(after)]
    report = import_sources(engine, sources)
    assert_sane(report)
    assert [r.source for r in report.rejected] == sources[:-1]
    assert [r.reason.split(":")[0] for r in report.rejected] == [
        "invalid URL", "invalid URL", "fetch failed", "fetch failed", "cannot read file"]
    assert "cannot resolve ..: encoding with 'idna' codec failed" in report.rejected[2].reason
    assert sorted(stored(engine)) == ["good-1"]


@pytest.mark.parametrize("location", [
    "javascript:alert(1)", "mailto:x@example.org", "data:text/plain,hi", "ws://127.0.0.1:1/feed",
    "ftp://ftp.example/feed", "file:///etc/passwd",
])
def test_a_redirect_to_another_scheme_is_refused(engine, tmp_path, location):
    server, served = serve()
    try:
        url = served.add("/moved", location, status=302)
        after = served.add("/after.json", json.dumps([good(1)]), "application/json")
        report = import_sources(engine, [url, after], allow_private=True)
    finally:
        server.shutdown()
    scheme = location.split(":")[0]
    assert reasons(report) == [("", f"refused a redirect to a {scheme}: URL (only http and https are fetched)")]
    assert served.hits == ["/moved", "/after.json"]
    assert sorted(stored(engine)) == ["good-1"]


# Hostile values for any field: wrong types, nesting, and the strings that broke something once.
NASTY_TEXT = st.sampled_from([
    "", " ", "\x00", "\ud800", "\udfff", "a\ud800b", "\u2028", "\r\n", "\x1b[2J", WIDE_ID, "x" * 3000,
    "http://[::1", "https://ok.example:99999/", "https://:1/", "javascript:alert(1)", "//ok.example/x",
    "99999-01-01T00:00:00Z", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "2025-01-28T10:00:00",
    "2025-01-28T10:00:00Z", "https://ok.example/a", "RU", "ru; UA", "XX", "<script>x</script>", "<b>" * 500,
    "&#xD800;", "NaN", "\ufeff", "\U0010ffff",
])
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # surrogates included
SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**30) | st.floats()
           | TEXT | NASTY_TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8)


@st.composite
def items(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(VALUES)  # not an object at all
    item = good(draw(st.integers(0, 3)))
    for name in draw(st.sets(st.sampled_from(FIELDS))):
        if draw(st.booleans()):
            item[name] = draw(VALUES)
        else:
            item.pop(name, None)
    return item


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(batch=st.lists(items(), min_size=1, max_size=6), lines=st.booleans(), ascii_only=st.booleans())
def test_any_item_is_stored_or_rejected_with_a_reason(engine, tmp_path, batch, lines, ascii_only):
    if lines:
        # JSON Lines are recognised by their first line being an object.
        batch = [good(0), *batch]
        text = "\n".join(json.dumps(i, ensure_ascii=ascii_only) for i in batch)
    else:
        text = json.dumps(batch, ensure_ascii=ascii_only)
    path = tmp_path / f"fuzz-{os.getpid()}.json"
    # Unescaped lone surrogates are not UTF-8: "surrogatepass" writes them anyway.
    path.write_bytes(text.encode("utf-8", "surrogatepass"))

    first = import_sources(engine, [str(path)])
    assert_sane(first)
    kept = first.added + first.updated + first.unchanged
    # Every item is accounted for: kept, or rejected at its own position.
    assert kept + len(first.rejected) == len(batch)
    assert all(r.position for r in first.rejected)
    # What was kept is stored: importing again changes nothing and refuses the same things.
    again = import_sources(engine, [str(path)])
    assert (again.added, again.updated, again.unchanged) == (0, 0, kept)
    assert reasons(again) == reasons(first)


FEED_TEXT = st.sampled_from([
    "&#xD800;", "&#0;", "&#x110000;", "&#99999999999999999999;", "&#1;", "\x01", "]]>", "<![CDATA[x",
    "http://[::1", "https://ok.example:99999/", "Tue, 28 Jan 99999 10:00:00 GMT", "Tue, 28 Jan 9999 23:00:00 -1400",
    "Mon, 01 Jan 0001 00:00:00 +1400", "0000-00-00T00:00:00Z", "9999-12-31T23:59:59-23:59", "1e999",
    "99999999999999999999", "2025-13-45T99:99:99Z", "RU", "XX", "&amp;", "&unknown;", "<b>x</b>", "",
]) | st.text(st.characters(codec="utf-8", exclude_characters="<&"), max_size=30)


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(entries=st.lists(st.fixed_dictionaries({k: FEED_TEXT for k in ("title", "link", "date", "guid", "cat",
                                                                        "image")}), min_size=1, max_size=4),
       atom=st.booleans())
def test_any_feed_entry_is_stored_or_rejected_with_a_reason(engine, tmp_path, entries, atom):
    if atom:
        body = _atom(*(f'<entry><title>{e["title"]}</title><id>{e["guid"]}</id><link href="{e["link"]}"/>'
                       f'<updated>{e["date"]}</updated><category term="{e["cat"]}"/></entry>' for e in entries))
    else:
        body = _rss(*(f'<item><title>{e["title"]}</title><link>{e["link"]}</link><guid>{e["guid"]}</guid>'
                      f'<pubDate>{e["date"]}</pubDate><category>{e["cat"]}</category>'
                      f'<enclosure url="{e["image"]}" type="image/png"/></item>' for e in entries))
    path = tmp_path / f"fuzz-{os.getpid()}.xml"
    path.write_text(body, encoding="utf-8")
    first = import_sources(engine, [str(path)], default_region="RU")
    assert_sane(first)
    again = import_sources(engine, [str(path)], default_region="RU")
    assert reasons(again) == reasons(first)
    assert (again.added, again.updated) == (0, 0)
