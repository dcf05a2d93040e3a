"""A region set's HTML assembled from sections inlined once per edition equals the whole
document inlined (worker/render/sections.py), or is the whole document inlined, with the
reason counted, where that could not be promised."""

import shutil
import threading
from datetime import UTC, datetime, timedelta
from itertools import permutations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import worker.render.sections as sections_module
from tests.conftest import REPO
from worker import metrics
from worker.digest import select_sections, week_window
from worker.digest.select import StoryItem
from worker.ingest.sanitize import clean_title, sanitize_summary, summary_text
from worker.render.cache import VariantRenderer
from worker.render.clip import FULL, Trim, trims
from worker.render.compose import Addressee, compose
from worker.render.digest import TEMPLATE, build_context, render_variant
from worker.render.env import get_template
from worker.render.personalise import new_nonce
from worker.render.sections import Fallback, SectionCache, inline_whole
from worker.settings import Settings

POOL = ("RU", "UA", "DE", "FR", "GB")
INLINERS = ("premailer", "css-inline")
MONDAY = datetime(2025, 1, 27, 6, tzinfo=UTC)
# What a feed may send: markup-like titles, broken or hostile HTML, marker-shaped text of
# every kind this code writes (personal markers, section marks, text tokens).
HOSTILE = (
    "<!--", "-->", "<b>bold</b> & <i>", "&amp; &lt;p&gt; &#39;", "%%NL0123456789abcdef_EMAIL%%",
    "<!--%%NL0000000000000000_SECTION%%-->", "%%NL0000000000000000_T0%%", "{{ personal.email }}",
    "</td></tr></table>", "<style>a { color: red }</style>", "a\u00a0b\u200bc", "🙂 Ünïcödé – “quotes”", "",
    "<pre>\nkept</pre>", "<table><tr><td>cell</td></tr></table>", "<ul><li>one<li>two</ul>", "<p>open <b>bold",
    '<p onclick="x()">a</p><script>b()</script>', '<a href="https://x.example/?a=1&b=2">link</a>',
    "<blockquote>q</blockquote><br>tail", "</div></div>", "<p></p>", "plain text, no markup",
)
text = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=80), st.lists(st.sampled_from(HOSTILE), max_size=4)
                 .map("".join))


@st.composite
def stories(draw):
    made = []
    for n in range(draw(st.integers(1, 14))):
        summary = sanitize_summary(draw(text) * draw(st.sampled_from([1, 1, 1, 12])))
        made.append(StoryItem(
            id=n + 1, guid=f"g{n}", url=f"https://news.example/{n}?a=1&b=<{n}>",
            title=clean_title(draw(text)) or f"Story {n}", summary_html=summary, summary_text=summary_text(summary),
            published_at=MONDAY + timedelta(hours=draw(st.integers(0, 150))), source=clean_title(draw(text)),
            image_url=draw(st.sampled_from([None, f"https://img.example/{n}.jpg"])),
            regions=tuple(draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True)))))
    return made


region_sets = st.permutations(POOL).flatmap(lambda p: st.integers(1, len(p)).map(lambda k: tuple(p[:k])))
shortened = st.sampled_from([FULL, *trims(5)])


def _settings(inliner: str, **changes) -> Settings:
    return Settings(secret_key="test-secret-key", timezone="UTC", css_inliner=inliner, **changes)


def _body(selection, settings, nonce, trim=FULL):
    context = build_context(selection=selection, window=week_window("2025-W05", settings.tz),
                            edition_key="weekly-2025-W05", settings=settings, nonce=nonce, trim=trim)
    return get_template(settings.templates_dir, f"{TEMPLATE}/body.html").render(context)


@pytest.mark.parametrize("inliner", INLINERS)
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(week=stories(), wanted=st.lists(st.tuples(region_sets, shortened), min_size=1, max_size=6),
       region_url=st.sampled_from(["", "https://site.example/{region}/"]))
def test_assembled_html_equals_the_whole_document_inlined(inliner, week, wanted, region_url):
    settings = _settings(inliner, region_url=region_url)
    cache = SectionCache()
    for regions, trim in wanted * 2:  # the second time round, from what the cache holds
        selection = select_sections(week, regions, per_region=5)
        if selection.is_empty:
            continue
        nonce = new_nonce()
        body = _body(selection, settings, nonce, trim)
        assert cache.inline(body, nonce=nonce, inliner=inliner) == inline_whole(body, nonce=nonce, inliner=inliner)
    assert not cache.fallbacks


# Markup no sanitiser lets through, which parsers repair, each its own way: a document
# with it is still equal to the reference, inlined whole where sections could differ.
BROKEN = ("</td></tr></table>", "<p>open", "<table><tr><td>x", "</div>", "<td>cell</td>", "<li>x", "</body>",
          "<head><style>p { color: red }</style></head>", "<b><p>x</p></b>", "<a href='x'><a href='y'>",
          "<svg><p>x</p></svg>", "<form><form>", "&unknown;", "<br/>", "<", "<!--x", "<tr>", "<body class=x>")


@pytest.mark.parametrize("inliner", INLINERS)
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(summaries=st.lists(st.lists(st.sampled_from(BROKEN), max_size=3).map("".join), min_size=1, max_size=8),
       data=st.data())
def test_markup_a_parser_repairs_is_equal_too(inliner, summaries, data):
    week = [StoryItem(id=n, guid=f"g{n}", url=f"https://news.example/{n}", title=f"Story {n}", summary_html=summary,
                      summary_text="", published_at=MONDAY + timedelta(hours=n), source="wire", image_url=None,
                      regions=data.draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=2, unique=True)))
            for n, summary in enumerate(summaries, start=1)]
    settings, cache = _settings(inliner), SectionCache()
    for regions in data.draw(st.lists(region_sets, min_size=1, max_size=6)):
        selection = select_sections(week, regions, per_region=5)
        if not selection.is_empty:
            nonce = new_nonce()
            body = _body(selection, settings, nonce)
            assert cache.inline(body, nonce=nonce, inliner=inliner) == inline_whole(body, nonce=nonce,
                                                                                     inliner=inliner)
    assert Fallback.DIFFERS not in cache.fallbacks  # the rules saw it first


def _story(n, region, *, title=None, summary="<p>Talks went on late into the night.</p>"):
    return StoryItem(id=n, guid=f"g{n}", url=f"https://news.example/{n}", title=title or f"{region} story {n}",
                     summary_html=summary, summary_text=summary_text(summary),
                     published_at=MONDAY + timedelta(hours=n), source="wire", image_url=None, regions=(region,))


WEEK = [_story(n, region) for n, region in enumerate(POOL * 3, start=1)]


@pytest.mark.parametrize("inliner", INLINERS)
def test_a_story_cannot_forge_a_marker_a_mark_or_a_token(inliner):
    settings = _settings(inliner)
    week = list(WEEK)
    renderer = VariantRenderer(settings=settings, window=week_window("2025-W05", settings.tz),
                               edition_key="weekly-2025-W05", load_stories=lambda regions: week)
    first = renderer.variant(("RU", "UA"))
    # The markers of an earlier variant of this edition, and every shape this code writes.
    forged = [*first.tokens.values(), f"%%NL{first.nonce}_T0%%", "%%NL0000000000000000_EMAIL%%",
              f"%%NL{first.nonce}_SECTION%%"]
    text = " ".join(forged[:-1]) + f" <!--{forged[-1]}-->"
    week.append(_story(99, "DE", title=text, summary=sanitize_summary(f"<p>{text}</p>")))
    variant = renderer.variant(("DE", "RU"))
    digest = compose(variant, Addressee("anna@example.org", "Anna", 1), settings=settings, secret="s").digest
    assert "Hello Anna," in digest.html and "Stop Germany news" in digest.html
    for marker in forged:  # as the story wrote them: neither filled in nor cut at
        assert marker in digest.html and marker in digest.text
    assert renderer._sections.fallbacks == {}
    nonce = new_nonce()
    body = _body(select_sections(week, ("DE", "RU"), per_region=5), settings, nonce)
    assert renderer._sections.inline(body, nonce=nonce, inliner=inliner) == inline_whole(body, nonce=nonce,
                                                                                         inliner=inliner)


@pytest.mark.parametrize("inliner", INLINERS)
def test_once_cached_a_region_set_costs_one_inliner_call_without_any_story(inliner, monkeypatch):
    settings, cache = _settings(inliner), SectionCache()
    sets = [p for k in (1, 2, 3) for p in permutations(("RU", "UA", "DE"), k)]
    for regions in sets:
        render_variant(selection=select_sections(WEEK, regions, per_region=5), window=week_window(
            "2025-W05", settings.tz), edition_key="weekly-2025-W05", settings=settings, sections=cache)
    seen: list[str] = []
    run = sections_module.run_inliner
    monkeypatch.setattr(sections_module, "run_inliner", lambda html, **kw: seen.append(html) or run(html, **kw))
    documents = metrics.sample("newsletter_variants_inlined_total", inliner=inliner)
    for regions in sets:  # the same structures again, as a second process of the edition would render them
        nonce = new_nonce()
        body = _body(select_sections(WEEK, regions, per_region=5), settings, nonce)
        assert cache.inline(body, nonce=nonce, inliner=inliner) == inline_whole(body, nonce=nonce, inliner=inliner)
    assert len(seen) == len(sets) and not any("story-title" in html or "<style" in html for html in seen)
    # inline_whole above counted its own documents: one each for both paths.
    assert metrics.sample("newsletter_variants_inlined_total", inliner=inliner) - documents == 2 * len(sets)
    assert not cache.fallbacks


def test_a_trimmed_form_is_its_own_entry_and_still_equal():
    settings, cache = _settings("css-inline"), SectionCache()
    long = "<p>" + "Talks went on late into the night, and again the next day. " * 8 + "</p>"
    week = [_story(n, region, summary=long) for n, region in enumerate(("RU", "UA") * 3, start=1)]
    selection = select_sections(week, ("RU", "UA"), per_region=5)
    for trim in (FULL, Trim(None, 240), Trim(1, 100), FULL, Trim(1, 0), Trim(None, 240)):
        nonce = new_nonce()
        body = _body(selection, settings, nonce, trim)
        assert cache.inline(body, nonce=nonce, inliner="css-inline") == inline_whole(body, nonce=nonce,
                                                                                     inliner="css-inline")
    assert len(cache._sections) == 2 * 4  # two sections in four forms
    assert not cache.fallbacks


def test_lanes_share_one_cache_and_it_stays_bounded(monkeypatch):
    monkeypatch.setattr(sections_module, "_MAX_SECTIONS", 5)
    settings, cache = _settings("css-inline"), SectionCache()
    sets = [p for k in (1, 2, 3) for p in permutations(POOL, k)]
    wrong: list[tuple[str, ...]] = []

    def lane(mine):
        for regions in mine:
            nonce = new_nonce()
            body = _body(select_sections(WEEK, regions, per_region=5), settings, nonce)
            if cache.inline(body, nonce=nonce, inliner="css-inline") != inline_whole(body, nonce=nonce,
                                                                                     inliner="css-inline"):
                wrong.append(regions)

    lanes = [threading.Thread(target=lane, args=(sets[n::4],)) for n in range(4)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    assert wrong == [] and not cache.fallbacks and len(cache._sections) <= 5


def _custom(tmp_path, *, body=lambda s: s, css=""):
    folder = tmp_path / "templates"
    shutil.copytree(REPO / "templates" / "email", folder)
    path = folder / "weekly_digest" / "body.html"
    path.write_text(body(path.read_text()))
    (folder / "_base" / "email.css").write_text((folder / "_base" / "email.css").read_text() + css)
    return folder


def _first(text: str, old: str, new: str) -> str:
    assert old in text
    return text.replace(old, new, 1)


CUSTOMISED = {
    Fallback.NO_MARKS: dict(body=lambda s: s.replace("{{ section_mark }}", "")),
    Fallback.SELECTORS: dict(css=".story:first-child { color: red; }"),
    Fallback.EDGES: dict(body=lambda s: _first(s, "{%- endif %}\n{{ section_mark }}{% endfor", "{%- endif %}{{ section_mark }}{% endfor")),
    Fallback.BETWEEN: dict(body=lambda s: _first(s, "{{ section_mark }}{% endfor %}",
                                                 "{{ section_mark }}\n<hr>\n{% endfor %}")),
    Fallback.STYLESHEET: dict(body=lambda s: _first(s, '<h2 class="section-title">',
                                                    '<style>h2 { color: red }</style>\n<h2 class="section-title">')),
    Fallback.RAW_TEXT: dict(body=lambda s: _first(s, '<p class="intro">', '<pre>\nnote</pre>\n<p class="intro">')),
}


@pytest.mark.parametrize("reason", list(CUSTOMISED))
@pytest.mark.parametrize("inliner", INLINERS)
def test_a_template_the_rules_cannot_vouch_for_is_inlined_whole(tmp_path, inliner, reason):
    settings = _settings(inliner, templates_dir=_custom(tmp_path, **CUSTOMISED[reason]))
    cache = SectionCache()
    for regions in [("RU", "UA"), ("UA", "RU", "DE"), ("DE", "FR")]:
        nonce = new_nonce()
        body = _body(select_sections(WEEK, regions, per_region=5), settings, nonce)
        assert cache.inline(body, nonce=nonce, inliner=inliner) == inline_whole(body, nonce=nonce, inliner=inliner)
    assert cache.fallbacks == {reason: 3}


@pytest.mark.parametrize("selector", ["h2 + .story", ".story ~ p", "p:nth-child(2n+1)", ".story:last-of-type",
                                      "td:empty", "div:has(> p)", "a:not(.x)", ".story-title:only-child a"])
def test_selectors_that_look_at_siblings_position_or_content_are_refused(selector):
    assert not sections_module._local_selectors(f"<style>{selector} {{ color: red }}</style>")


@pytest.mark.parametrize("css", ["a:hover { color: red }", "[data-ogsc] .content a { color: #fff !important }",
                                 "td > p::before { content: '+' }", 'a[href~="x"] { color: red }',
                                 "@media (max-width: 620px) { .x { width: calc(100% + 2px) !important } }"])
def test_selectors_on_an_element_and_its_ancestors_are_accepted(css):
    assert sections_module._local_selectors(f"<style>{css}</style>")


def test_a_difference_from_the_whole_document_sends_the_edition_the_whole_way(monkeypatch):
    settings, cache = _settings("css-inline"), SectionCache()
    run = sections_module.run_inliner

    def pieces_go_wrong(html, **kw):
        out = run(html, **kw)
        return out.replace("Stop Russia news", "Stop Russia news!") if "_SECTION%%" in html else out

    monkeypatch.setattr(sections_module, "run_inliner", pieces_go_wrong)
    for n, regions in enumerate([("RU",), ("UA", "RU")], start=1):
        nonce = new_nonce()
        body = _body(select_sections(WEEK, regions, per_region=5), settings, nonce)
        assert cache.inline(body, nonce=nonce, inliner="css-inline") == inline_whole(body, nonce=nonce,
                                                                                     inliner="css-inline")
        assert cache.fallbacks == {Fallback.DIFFERS: n}
