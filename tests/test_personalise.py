"""Personal values land only where the template put them: a story that spells out a
marker gets the marker's text, never a reader's address or unsubscribe link."""

import json
from datetime import UTC, datetime

import pytest

from worker.delivery.plan import plan_edition
from worker.delivery.variants import VariantStore
from worker.digest import select_sections, week_window
from worker.digest.queries import fetch_window_stories
from worker.ingest import import_sources
from worker.render.compose import Addressee, compose
from worker.render.digest import render_variant
from worker.store.db import session_scope

NOW = datetime(2025, 2, 3, 7, tzinfo=UTC)
READER = Addressee("reader@example.org", "Reader", 42)
# The fixed markers of earlier versions, and guesses at the shape of the new ones.
MARKERS = ["%%NL_EMAIL%%", "%%NL_UNSUBSCRIBE_URL%%", "%%NL_VIEW_ONLINE_URL%%", "%%NL_GREETING%%",
           "%%NL0000000000000000_EMAIL%%", "%%NL_UNSUBSCRIBE_URL%%%%NL_EMAIL%%"]


def _stories(tmp_path, hostile: bool):
    items = []
    for n, marker in enumerate(MARKERS):
        m = marker if hostile else "plain"
        items.append({
            "id": f"story-{n}-{m}", "url": f"https://feed.example/{n}/{m}",
            "title": f"Title {m}", "summary": f"<p>Summary {m} <a href=\"https://feed.example/{m}\">{m}</a>"
                                              f"<img src=\"https://track.example/{m}.png\"></p>",
            "regions": ["RU"], "published_at": f"2025-01-{28 + n % 3}T10:00:00Z", "source": f"src {m}",
            "image_url": f"https://track.example/pixel.png?who={m}",
        })
    path = tmp_path / ("hostile.json" if hostile else "clean.json")
    path.write_text(json.dumps(items))
    return path


def _variant(engine, settings, tmp_path, hostile):
    report = import_sources(engine, [str(_stories(tmp_path, hostile))])
    assert not report.rejected, report.rejected
    window = week_window("2025-W05", settings.tz)
    with session_scope(engine) as session:
        stories = [s for s in fetch_window_stories(session, window, ("RU",))
                   if ("%%" in s.title) == hostile]
    assert len(stories) == len(MARKERS)
    selection = select_sections(stories, ("RU",), per_region=len(MARKERS))
    return render_variant(selection=selection, window=window, edition_key="weekly-2025-W05", settings=settings)


def _counts(composed, values):
    digest = composed.digest
    data = composed.data
    return {name: (digest.html.count(value), digest.text.count(value), data.count(value.encode()))
            for name, value in values.items()}


@pytest.mark.parametrize("reference", [False, True], ids=["skeleton", "reference"])
def test_markers_in_every_story_field_are_never_filled_with_personal_values(engine, settings, tmp_path, reference):
    settings = settings.model_copy(update={"stories_per_region": len(MARKERS)})
    clean = _variant(engine, settings, tmp_path, hostile=False)
    hostile = _variant(engine, settings, tmp_path, hostile=True)
    # The feed's markers reached the rendered variant: they are in the content as text.
    assert "%%NL_EMAIL%%" in hostile.html and "%%NL_UNSUBSCRIBE_URL%%" in hostile.text
    a = compose(clean, READER, settings=settings, secret="s", now=NOW, reference=reference)
    b = compose(hostile, READER, settings=settings, secret="s", now=NOW, reference=reference)
    unsubscribe, online = a.recipient.unsubscribe_url, a.recipient.view_online_url
    values = {"email": READER.email, "unsubscribe": unsubscribe, "online": online.rsplit("/", 1)[0],
              "greeting": "Hello Reader,"}
    assert _counts(a, values) == _counts(b, values)
    assert b.digest.html.count(unsubscribe) == 1 and b.digest.text.count(unsubscribe) == 1
    assert 'src="https://track.example/pixel.png?who=%%NL_EMAIL%%"' in b.digest.html
    assert "https://feed.example/1/%%NL_UNSUBSCRIBE_URL%%" in b.digest.text
    assert "reader@example.org" not in b.digest.html.split("You are receiving this")[0]
    # And the feed's markers are shown as they came.
    assert b.digest.text.count("%%NL_EMAIL%%") >= len(MARKERS)


def test_every_render_draws_its_own_markers(sample_engine, settings):
    window = week_window("2025-W05", settings.tz)
    with session_scope(sample_engine) as session:
        stories = fetch_window_stories(session, window, ("RU", "UA"))
    selection = select_sections(stories, ("RU", "UA"), per_region=5)
    one, two = (render_variant(selection=selection, window=window, edition_key="k", settings=settings)
                for _ in range(2))
    assert one.nonce != two.nonce and len(one.nonce) == 16
    for variant in (one, two):
        assert variant.html.count(variant.tokens["unsubscribe_url"]) == 1
        assert variant.text.count(variant.tokens["email"]) == 1
        assert "%%NL_" not in variant.html and "%%NL_" not in variant.text


def test_stored_variants_keep_their_markers_across_processes(sample_engine, settings):
    window = week_window("2025-W05", settings.tz)
    planned = plan_edition(sample_engine, key="weekly-2025-W05", kind="weekly", window=window, now=NOW)
    store = VariantStore(sample_engine, edition_id=planned.edition_id, edition_key="weekly-2025-W05")
    with session_scope(sample_engine) as session:
        stories = fetch_window_stories(session, window, ("RU",))
    variant = render_variant(selection=select_sections(stories, ("RU",), per_region=5), window=window,
                             edition_key="weekly-2025-W05", settings=settings)
    assert store.claim(("RU",), "en")
    store.save(("RU",), "en", variant)
    stored = store.get(("RU",), "en")
    assert stored == variant
    copy = compose(stored, READER, settings=settings, secret="s", now=NOW)
    assert "Hello Reader," in copy.digest.text and "%%NL" not in copy.digest.html


def test_a_claim_whose_reply_was_lost_is_known_as_ours_on_the_next_try(sample_engine, settings):
    """The database wrote our claim and went down before answering: the retry knows the claim
    as its own and renders, instead of waiting a minute for a render nobody is doing, while
    another process still sees the claim as taken."""
    from sqlalchemy.exc import OperationalError

    window = week_window("2025-W05", settings.tz)
    planned = plan_edition(sample_engine, key="weekly-2025-W05", kind="weekly", window=window, now=NOW)

    class ReplyLostOnce(VariantStore):
        """The first claim is written but its reply lost; the second finds the database down."""
        tries = 0

        def _connect(self):
            conn = super()._connect()
            self.tries += 1
            if self.tries <= 2:
                original, write = conn.execute, self.tries == 1

                def execute(*args, **kwargs):
                    if write:
                        original(*args, **kwargs)  # written and committed (autocommit)...
                    raise OperationalError("INSERT", {}, Exception("server closed the connection unexpectedly"))
                conn.execute = execute
            return conn

    ours = ReplyLostOnce(sample_engine, edition_id=planned.edition_id, edition_key="weekly-2025-W05")
    other = VariantStore(sample_engine, edition_id=planned.edition_id, edition_key="weekly-2025-W05")
    for _ in range(2):
        with pytest.raises(OperationalError):
            ours.claim(("RU",), "en")
    assert not other.claim(("RU",), "en")
    assert ours.claim(("RU",), "en")  # ...and a later try knows it
    assert not other.claim(("RU",), "en")
    ours.save(("RU",), "en", None)
    assert not ours.claim(("RU",), "en")  # saved: nothing left to claim, for anyone
