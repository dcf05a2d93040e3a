"""Templates, the rendered digest, personalisation and the one-inline-per-variant rule."""

import json
import re
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from html import unescape
from pathlib import Path

import pytest
from jinja2 import UndefinedError, meta, nodes

from tests.conftest import REPO
from worker import metrics
from worker.digest import select_sections, week_window
from worker.digest.queries import fetch_window_stories
from worker.digest.select import StoryItem
from worker.ingest import import_sources
from worker.render.cache import VariantRenderer
from worker.render.compose import Addressee, compose
from worker.render.digest import build_context, render_variant
from worker.render.env import get_template
from worker.store.db import session_scope

GOLDEN = Path(__file__).parent / "golden"
TEMPLATES = REPO / "templates" / "email"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)


def _variant(engine, settings, regions=("RU", "UA"), week="2025-W05"):
    window = week_window(week, settings.tz)
    with session_scope(engine) as session:
        stories = fetch_window_stories(session, window, regions)
    selection = select_sections(stories, regions, per_region=settings.stories_per_region)
    return render_variant(selection=selection, window=window, edition_key=f"weekly-{week}", settings=settings)


def _context(engine, settings):
    window = week_window("2025-W05", settings.tz)
    with session_scope(engine) as session:
        stories = fetch_window_stories(session, window)
    selection = select_sections(stories, ("RU", "UA"), per_region=5)
    return build_context(selection=selection, window=window, edition_key="weekly-2025-W05", settings=settings,
                         nonce="0123")


@pytest.mark.parametrize("name", ["subject.txt", "body.txt", "body.html"])
def test_every_template_renders_under_strict_undefined(sample_engine, settings, name):
    context = _context(sample_engine, settings)
    template = get_template(TEMPLATES, f"weekly_digest/{name}")
    assert template.render(context).strip()
    used = _variables(template, name)
    assert used and used <= set(context)
    for key in used:
        broken = {k: v for k, v in context.items() if k != key}
        # A missing count fails in the plural's rule (TypeError), any other value as undefined.
        with pytest.raises((UndefinedError, TypeError)):
            template.render(broken)


def _variables(template, name):
    env = template.environment
    sources = [f"weekly_digest/{name}"]
    if name != "subject.txt":
        sources.append("_base/layout." + name.rsplit(".", 1)[1])
    found, assigned = set(), set()
    for source in sources:
        tree = env.parse(env.loader.get_source(env, source)[0])
        found |= meta.find_undeclared_variables(tree)
        # A {% set %} inside a branch reads to Jinja's analysis as maybe undefined: it is the template's own.
        assigned |= {node.target.name for node in tree.find_all((nodes.Assign, nodes.AssignBlock))}
    return found - assigned


def test_every_template_in_the_folder_is_rendered_by_the_test_above():
    # confirm/ is rendered the same way in tests/test_readers_mail.py.
    names = sorted(p.relative_to(TEMPLATES).as_posix() for p in TEMPLATES.rglob("*") if p.is_file())
    assert names == [
        "_base/email.css", "_base/layout.html", "_base/layout.txt",
        "confirm/body.html", "confirm/body.txt", "confirm/subject.txt",
        "weekly_digest/body.html", "weekly_digest/body.txt", "weekly_digest/subject.txt",
    ]


def test_the_subject_is_the_top_story_of_the_first_region_without_the_brand(sample_engine, settings):
    variant = _variant(sample_engine, settings)
    assert variant.subject == "Drone Swarm Breaches Russian Air Defense, Sparks Refinery Explosion"
    assert _variant(sample_engine, settings, regions=("UA", "RU")).subject == \
        "Ukrainian Grid Operator Lifts Scheduled Outages as Temperatures Rise"


def test_golden_text_part(sample_engine, settings):
    settings = settings.model_copy(update={"region_url": "http://127.0.0.1:8000/regions/{region}"})
    variant = _variant(sample_engine, settings)
    text = compose(variant, Addressee("anna@example.org", "Anna", 1, "g0ldenLinkKey-16"), settings=settings,
                   secret="golden", now=NOW).digest.text
    golden = GOLDEN / "weekly_digest_RU-UA_2025-W05.txt"
    if not golden.exists():  # first run writes it; review and commit it
        golden.write_text(text, encoding="utf-8")
    assert text == golden.read_text(encoding="utf-8")


def test_html_is_inlined_keeps_media_queries_and_is_under_the_clip(sample_engine, settings):
    variant = _variant(sample_engine, settings)
    html = variant.html
    assert html.startswith("<!DOCTYPE html>")
    assert '<html lang="en"' in html and 'role="presentation"' in html
    assert "@media only screen and (max-width: 620px)" in html
    assert "prefers-color-scheme: dark" in html and 'name="color-scheme"' in html
    assert 'class="preheader" style="display:none' in html
    assert 'style="' in html.split("<body", 1)[1][:2000]  # rules became inline styles
    assert "!important" in html
    assert "Russia" in html and "Ukraine" in html
    assert settings.postal_address in html
    assert not variant.clipped and variant.html_bytes < 60_000


def test_personal_values_are_escaped_for_their_place(sample_engine, settings):
    variant = _variant(sample_engine, settings)
    composed = compose(variant, Addressee("o'neil@example.org", 'Anna "<b>" & Co', 7),
                       settings=settings, secret="s")
    assert "because o&#x27;neil@example.org follows" in composed.digest.html
    assert "because o'neil@example.org follows" in composed.digest.text
    assert "Hello Anna &quot;&lt;b&gt;&quot; &amp; Co," in composed.digest.html
    assert 'Hello Anna "<b>" & Co,' in composed.digest.text
    assert "%%NL" not in composed.digest.html and "%%NL" not in composed.digest.text
    assert f"{settings.public_url}/unsubscribe/" in composed.digest.text
    assert f"{settings.public_url}/archive/weekly-2025-W05/RU-UA" in composed.digest.html


def test_hostile_story_content_renders_inert_in_both_parts(engine, settings, tmp_path):
    item = {
        "id": "evil", "url": "https://evil.example/a?x=1&y=\"2\"", "regions": ["RU"],
        "title": "{{ config }} <script>alert(1)</script>\r\nBcc: x@y",
        "summary": '<p onclick="x()">{{ 7*7 }}</p><script>steal()</script>'
                   '<a href="javascript:alert(1)">j</a><img src=x onerror=alert(2)>',
        "published_at": "2025-01-28T10:00:00Z", "source": "<b>wire</b>",
    }
    path = tmp_path / "evil.json"
    path.write_text(json.dumps([item]))
    assert import_sources(engine, [str(path)]).added == 1
    variant = _variant(engine, settings, regions=("RU",))
    composed = compose(variant, Addressee("a@example.org", None, 1), settings=settings, secret="s")
    html, text = composed.digest.html, composed.digest.text
    assert "<script" not in html and "onclick" not in html and "onerror" not in html
    assert "javascript:" not in html
    assert "{{ config }} &lt;script&gt;alert(1)&lt;/script&gt; Bcc: x@y" in html
    assert "&lt;b&gt;wire&lt;/b&gt;" in html
    assert "{{ 7*7 }}" in html and "49" not in html.replace("#49", "")
    # premailer re-quotes an attribute holding " with ': still one attribute value.
    assert """href='https://evil.example/a?x=1&amp;y="2"'""" in html
    assert "{{ config }} <script>alert(1)</script> Bcc: x@y" in text
    assert "{{ 7*7 }}" in text


# The database only supplies the week's stories here; one kind is enough.
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_each_region_set_is_inlined_once_for_1000_subscribers(sample_engine, settings):
    window = week_window("2025-W05", settings.tz)
    with session_scope(sample_engine) as session:
        week = fetch_window_stories(session, window)

    def load(regions):
        return [s for s in week if set(s.regions) & set(regions)]

    renderer = VariantRenderer(settings=settings, window=window, edition_key="weekly-2025-W05",
                               load_stories=load)
    region_sets = [("RU", "UA"), ("UA", "RU"), ("DE", "FR", "GB"), ("US",), ("JP",), ("CN", "RU")]
    inlined, calls = "newsletter_variants_inlined_total", "newsletter_inliner_calls_total"
    before = metrics.sample(inlined, inliner="premailer")
    calls_before = metrics.sample(calls, inliner="premailer")
    sent = 0
    for n in range(1000):
        variant = renderer.variant(region_sets[n % len(region_sets)])
        if variant is None:
            continue
        composed = compose(variant, Addressee(f"reader{n}@example.org", f"Reader {n}", n + 1),
                           settings=settings, secret="s")
        assert f"Hello Reader {n}," in composed.digest.text
        sent += 1
    assert metrics.sample(inlined, inliner="premailer") - before == 5  # six sets, JP has no stories in 2025-W05
    # Documents are assembled from sections inlined once per edition: more, smaller calls
    # into premailer than documents, but never one per recipient.
    assert 5 < metrics.sample(calls, inliner="premailer") - calls_before < 50
    assert sent == 1000 - 166


def test_a_bare_text_summary_gets_a_paragraph(sample_engine, settings):
    html = _variant(sample_engine, settings, regions=("RU",)).html
    assert '<div class="story-summary"' in html
    body = html.split('<div class="story-summary"', 1)[1]
    assert body.split(">", 1)[1].lstrip().startswith("<p")


def test_eml_round_trips(sample_engine, settings):
    variant = _variant(sample_engine, settings)
    data = compose(variant, Addressee("anna@example.org", "Anna", 1), settings=settings, secret="s").data
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_css_inline_is_an_equivalent_inliner(sample_engine, settings):
    fast = settings.model_copy(update={"css_inliner": "css-inline"})
    a, b = _variant(sample_engine, settings), _variant(sample_engine, fast)
    for variant in (a, b):
        html = variant.html
        assert "@media only screen and (max-width: 620px)" in html and "prefers-color-scheme: dark" in html
        assert f'href="{variant.tokens["unsubscribe_url"]}"' in html and 'style="' in html.split("<body", 1)[1][:3000]
        assert "Russia" in html


def test_kept_stylesheet_rules_inline_exactly_as_premailer_does(sample_engine, settings, monkeypatch):
    import premailer

    import worker.render.sections as sections
    from worker.render.inline import PREMAILER_OPTIONS, inline_css

    seen: list[str] = []
    monkeypatch.setattr(sections, "inline_css", lambda html, **kw: seen.append(html) or inline_css(html, **kw))
    for regions in [("RU", "UA"), ("DE", "FR", "GB"), ("US",), ("CN", "RU")]:
        _variant(sample_engine, settings, regions=regions)
    # A second stylesheet in the same process: the rules are kept per stylesheet text.
    other = seen[0].replace("<style", "<style>td { color: #010203 }</style><style", 1)
    for html in [*seen, other, *seen]:
        assert inline_css(html) == premailer.Premailer(html, **PREMAILER_OPTIONS).transform()
    assert "color:#010203" in inline_css(other).replace(" ", "")


def test_compose_counts_its_cpu_by_stage(sample_engine, settings):
    variant = _variant(sample_engine, settings)
    stages = ("personalise", "mime")
    before = {s: metrics.sample("newsletter_stage_cpu_seconds_total", stage=s) for s in stages}
    for n in range(50):
        compose(variant, Addressee(f"r{n}@example.org", "R", n + 1), settings=settings, secret="s")
    assert all(metrics.sample("newsletter_stage_cpu_seconds_total", stage=s) > before[s] for s in stages)


def test_region_links_and_the_masthead_link_only_where_configured(sample_engine, settings):
    bare = _variant(sample_engine, settings)
    assert "More from" not in bare.text and "More from" not in bare.html
    assert "/regions/" not in bare.html and settings.public_url + '"' not in bare.html
    linked = _variant(sample_engine, settings.model_copy(update={
        "site_url": "https://site.example", "region_url": "https://site.example/world/{region}/"}))
    assert 'href="https://site.example"' in linked.html
    assert 'href="https://site.example/world/RU/"' in linked.html and "https://site.example/world/UA/" in linked.text


def _preheader(html: str) -> str:
    return re.search(r'<div class="preheader"[^>]*>([^<\n]*)', html)[1]


def test_the_preheader_says_what_follows_the_subject_not_the_subject_again(sample_engine, settings):
    variant = _variant(sample_engine, settings)
    text = variant.text
    titles = re.findall(r"^\d+\. (.+)$", text, re.MULTILINE)
    assert titles[0] == variant.subject and len(titles) > 3
    preheader = unescape(_preheader(variant.html))
    assert variant.subject not in preheader
    assert preheader == f"{titles[1]} · {titles[2]} and {len(titles) - 3} more"


def test_a_one_story_mail_has_its_regions_as_preheader(settings):
    one = [StoryItem(id=1, guid="g1", url="https://news.example/a", title="Only story", summary_html="<p>s</p>",
                     summary_text="s", published_at=datetime(2025, 1, 30, tzinfo=UTC), source="wire",
                     image_url=None, regions=("UA",))]
    window = week_window("2025-W05", settings.tz)
    variant = render_variant(selection=select_sections(one, ("UA",), per_region=5), window=window,
                             edition_key="weekly-2025-W05", settings=settings)
    assert variant.subject == "Only story"
    assert _preheader(variant.html) == "This week from Ukraine"


def test_every_image_is_fluid_in_its_own_style_and_decorative_beside_its_title(sample_engine, settings):
    # France, Poland and China each have a story with an image that week.
    html = _variant(sample_engine, settings, regions=("FR", "PL", "CN")).html
    images = re.findall(r"<img\b[^>]*>", html)
    assert len(images) == 3
    for image in images:
        style = re.search(r'style="([^"]*)"', image)[1].replace(" ", "")
        assert "max-width:100%" in style and "height:auto" in style and "width:100%" in style.split(";")
        assert int(re.search(r'width="(\d+)"', image)[1]) <= 560  # the container's 600 px less its padding
        # The title links the same story right above: the image repeats nothing to a screen reader.
        assert ' alt=""' in image
    links = re.findall(r'<a class="story-image-link"[^>]*>', html)
    assert len(links) == 3 and all('aria-hidden="true"' in a and 'tabindex="-1"' in a for a in links)
