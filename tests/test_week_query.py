"""The week's stories from the database, on both databases."""

import json
from zoneinfo import ZoneInfo

from worker.digest import select_sections, week_window
from worker.digest.queries import fetch_window_stories
from worker.ingest import import_sources
from worker.store.db import session_scope


def test_window_query_uses_half_open_local_boundaries(engine, tmp_path):
    items = [
        # Berlin is UTC+1 in winter: Sunday 23:59 local is 22:59Z; Monday 00:00 local is 23:00Z.
        {"id": "last", "url": "https://x.example/1", "title": "Sunday late", "regions": ["DE"],
         "published_at": "2025-02-02T22:59:00Z"},
        {"id": "next", "url": "https://x.example/2", "title": "Monday midnight", "regions": ["DE"],
         "published_at": "2025-02-03T00:00:00+01:00"},
        {"id": "first", "url": "https://x.example/3", "title": "Monday start", "regions": ["DE", "FR"],
         "published_at": "2025-01-27T00:00:00+01:00"},
        {"id": "fr", "url": "https://x.example/4", "title": "Paris", "regions": ["FR"],
         "published_at": "2025-01-30T12:00:00Z"},
    ]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(items))
    assert not import_sources(engine, [str(path)]).rejected
    window = week_window("2025-W05", ZoneInfo("Europe/Berlin"))
    with session_scope(engine) as session:
        everything = fetch_window_stories(session, window)
        german = fetch_window_stories(session, window, ["DE"])
    assert sorted(s.guid for s in everything) == ["first", "fr", "last"]
    assert sorted(s.guid for s in german) == ["first", "last"]
    selection = select_sections(everything, ["FR", "DE"], per_region=5)
    assert [(s.region, [x.guid for x in s.stories]) for s in selection.sections] == [
        ("FR", ["fr", "first"]), ("DE", ["last"])
    ]
