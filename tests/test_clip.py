"""Gmail's clip: a variant whose HTML part as sent would pass it is shortened first, the
same way every time, and its copies keep their footer and unsubscribe link."""

import re
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser

import pytest

from worker.digest import select_sections, week_window
from worker.digest.queries import fetch_window_stories
from worker.digest.select import StoryItem
from worker.render.clip import FULL, GMAIL_CLIP_BYTES, SEND_LIMIT_BYTES, Trim, sent_html_bytes, trims
from worker.render.compose import Addressee, compose
from worker.render.digest import TooLargeToSend, build_context, render_variant
from worker.render.env import get_template
from worker.render.sections import inline_whole
from worker.store.db import session_scope

# The database is not what these test: the stories are made here.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
NOW = datetime(2025, 2, 3, 7, tzinfo=UTC)
EIGHT = ("RU", "UA", "DE", "FR", "GB", "US", "CN", "PL")
TWENTY = (*EIGHT, "IT", "ES", "NL", "BE", "AT", "CH", "SE", "NO", "DK", "FI", "CZ", "SK")
SENTENCE = ("Officials said on Tuesday that the talks would continue next week, after negotiators failed to "
            "agree on the terms of a ceasefire and the timetable for an exchange of prisoners. ")
HTML_PART = b'Content-Type: text/html; charset="utf-8"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n'


def _stories(regions, per, summary_chars, *, sentence=SENTENCE, title="Ministers meet on the grain corridor"):
    found, n = [], 0
    for region in regions:
        for _ in range(per):
            n += 1
            text = (sentence * (summary_chars // len(sentence) + 1))[:summary_chars].strip()
            found.append(StoryItem(
                id=n, guid=f"g{n}", url=f"https://news.example/{region.lower()}/2025/01/story-number-{n}",
                title=f"{title} ({n})", summary_html=f"<p>{text}</p>", summary_text=text,
                published_at=datetime(2025, 1, 31, 9, tzinfo=UTC) - timedelta(minutes=n), source="melangenews",
                image_url=None, regions=(region,)))
    return found


def _render(settings, stories, regions, per_region=50):
    window = week_window("2025-W05", settings.tz)
    return render_variant(selection=select_sections(stories, regions, per_region=per_region), window=window,
                          edition_key="weekly-2025-W05", settings=settings)


def _copy(variant, settings, name="Maximilian-Alexander von Hohenzollern-Sigmaringen 🙂"):
    return compose(variant, Addressee("maximilian.alexander@example.org", name, 9_000_000), settings=settings,
                   secret="s", now=NOW)


def _html_part(data: bytes) -> bytes:
    """The HTML part's body as it goes on the wire (quoted-printable), which Gmail measures."""
    return data.split(HTML_PART, 1)[1].rsplit(b"\r\n--", 1)[0]


def _shown(variant) -> dict[str, int]:
    """Stories shown per section heading, in the text part."""
    counts, section, previous = {}, None, None
    for line in variant.text.splitlines():
        if re.fullmatch(r"=+", line) and previous:
            section = previous
            counts[section] = 0
        elif re.match(r"\d+\. ", line) and section:
            counts[section] += 1
        previous = line
    return counts


def _assert_sendable(variant, settings):
    copy = _copy(variant, settings)
    part = _html_part(copy.data)
    assert len(part) <= variant.sent_bytes <= SEND_LIMIT_BYTES < GMAIL_CLIP_BYTES
    html = copy.digest.html
    assert html.rstrip().endswith("</html>")
    footer = html[html.index('class="footer"'):]
    assert f'href="{copy.recipient.unsubscribe_url}"' in footer and ">Unsubscribe</a>" in footer
    assert settings.postal_address in footer
    assert f"Unsubscribe: {copy.recipient.unsubscribe_url}" in copy.digest.text
    msg = BytesParser(policy=policy.default).parsebytes(copy.data)
    assert msg.get_body(("html",)).get_content().replace("\r\n", "\n") == html
    return copy


def test_a_realistic_edition_over_the_clip_is_shortened_under_it(settings):
    stories = _stories(EIGHT, 5, 1500)
    variant = _render(settings, stories, EIGHT)
    assert variant.trim != FULL and variant.trim.stories is None  # every story kept, summaries cut
    copy = _assert_sendable(variant, settings)
    assert _shown(variant) == {name: 5 for name in _shown(variant)} and len(_shown(variant)) == 8
    full = _full_html(settings, stories, EIGHT)
    assert sent_html_bytes(full, nonce="0" * 16, regions=EIGHT, edition_key="weekly-2025-W05",
                           variant_key="RU-UA-DE-FR-GB-US-CN-PL", settings=settings) > GMAIL_CLIP_BYTES
    # Every summary cut at a word, with an ellipsis, the same in both parts.
    cut = variant.trim.summary
    summaries = re.findall(r'<div class="story-summary"[^>]*><p[^>]*>([^<]*)</p>', copy.digest.html)
    assert len(summaries) == 40
    for summary in summaries:
        assert summary.endswith("…") and len(summary) <= cut and SENTENCE.startswith(summary[:-1][:50])
        assert summary[:-1].rstrip(",.;:") + "…" == summary and not summary[:-1].endswith(" ")
        assert summary[:-1].split()[-1] in SENTENCE.split() or summary[:-1].split()[-1] + "," in SENTENCE
    assert "more stories online" not in copy.digest.html and "more stories online" not in copy.digest.text


def _full_html(settings, stories, regions):
    window = week_window("2025-W05", settings.tz)
    context = build_context(selection=select_sections(stories, regions, per_region=50), window=window,
                            edition_key="weekly-2025-W05", settings=settings, nonce="0" * 16)
    return inline_whole(get_template(settings.templates_dir, "weekly_digest/body.html").render(context),
                        nonce="0" * 16, inliner=settings.css_inliner)


def test_many_regions_keep_fewer_stories_and_say_how_many_more_are_online(settings):
    stories = _stories(TWENTY, 10, 900)
    variant = _render(settings, stories, TWENTY)
    kept = variant.trim.stories
    assert kept is not None and 1 <= kept < 10
    copy = _assert_sendable(variant, settings)
    hidden = 10 - kept
    label = f"{hidden} more {'story' if hidden == 1 else 'stories'} online"
    online = copy.recipient.view_online_url
    assert copy.digest.html.count(f'<a href="{online}"') >= 20
    assert len(re.findall(rf'<a href="{re.escape(online)}"[^>]*>{label}</a>', copy.digest.html)) == 20
    assert copy.digest.text.count(f"{label}:\n   {online}\n") == 20
    assert set(_shown(variant).values()) == {kept} and len(_shown(variant)) == 20


def test_a_shortened_mail_says_how_many_of_the_weeks_stories_it_holds(settings):
    variant = _render(settings, _stories(TWENTY, 10, 900), TWENTY)
    shown = 20 * variant.trim.stories
    copy = _assert_sendable(variant, settings)
    online = copy.recipient.view_online_url
    intro = re.search(r'<p class="intro"[^>]*>(.*?)</p>', copy.digest.html, re.DOTALL)[1]
    assert intro.startswith(f"Here are {shown} of this week's 200 stories from Russia, Ukraine, ")
    assert f'; the rest are <a href="{online}"' in intro and intro.endswith(">online</a>.")
    assert f"Here are {shown} of this week's 200 stories from " in copy.digest.text
    assert f"; the rest are online:\n{online}\n" in copy.digest.text
    # Not shortened: the count is the whole week's, as before.
    whole = _copy(_render(settings, _stories(EIGHT[:3], 5, 400), EIGHT[:3]), settings).digest
    assert "Here are this week's 15 stories from Russia, Ukraine and Germany." in whole.text
    assert "the rest are" not in whole.html


def test_the_more_link_goes_to_the_regions_page_when_the_site_has_one(settings):
    settings = settings.model_copy(update={"region_url": "https://site.example/regions/{region}"})
    variant = _render(settings, _stories(TWENTY, 10, 900), TWENTY)
    copy = _assert_sendable(variant, settings)
    hidden = 10 - variant.trim.stories
    assert 'href="https://site.example/regions/RU"' in copy.digest.html
    assert f"{hidden} more stories online:\n   https://site.example/regions/SK\n" in copy.digest.text
    assert "More from" not in copy.digest.text  # the count replaces the plain link in a shortened section


def test_one_huge_summary_is_cut_and_the_others_are_left_whole(settings):
    stories = _stories(EIGHT, 5, 300)
    huge = "x" * 50 + " " + "word " * 40_000
    stories[7] = StoryItem(**{**stories[7].__dict__, "summary_html": f"<p>{huge}</p>", "summary_text": huge})
    variant = _render(settings, stories, EIGHT)
    assert variant.trim.stories is None and variant.trim.summary is not None
    copy = _assert_sendable(variant, settings)
    assert copy.digest.html.count(SENTENCE[:200].strip()) == 39  # every other summary whole
    assert len(re.findall(r"(?:word ){5,}", copy.digest.html)) == 1


def test_multibyte_text_is_measured_as_sent(settings):
    cyrillic = "Правительство России утвердило сниженную квоту на экспорт зерна после слабого урожая. "
    stories = _stories(EIGHT, 5, 900, sentence=cyrillic, title="Переговоры о зерновом коридоре 🙂")
    variant = _render(settings, stories, EIGHT)
    assert variant.trim != FULL
    # Cyrillic is two bytes of UTF-8 and six of quoted-printable: the size is the part as sent.
    assert variant.sent_bytes > 1.5 * len(variant.html.encode("utf-8"))
    _assert_sendable(variant, settings)


def test_shortening_is_deterministic(settings):
    stories = _stories(TWENTY, 10, 900)
    a, b = _render(settings, stories, TWENTY), _render(settings, list(reversed(stories)), TWENTY)
    assert a.trim == b.trim and a.sent_bytes == b.sent_bytes
    assert a.html.replace(a.nonce, "N") == b.html.replace(b.nonce, "N")
    assert a.text.replace(a.nonce, "N") == b.text.replace(b.nonce, "N")


def test_it_keeps_the_most_it_can(settings):
    stories = _stories(TWENTY, 10, 900)
    variant = _render(settings, stories, TWENTY)
    levels = trims(10)
    at = levels.index(variant.trim)
    assert at > 0
    window = week_window("2025-W05", settings.tz)
    from worker.render.digest import _render as render_at

    selection = select_sections(stories, TWENTY, per_region=50)
    one_less = render_at(selection=selection, window=window, edition_key="weekly-2025-W05", settings=settings,
                         nonce=variant.nonce, trim=levels[at - 1])
    assert one_less.sent_bytes > SEND_LIMIT_BYTES  # the level before the chosen one does not fit


def test_the_levels_only_ever_keep_less(settings):
    levels = (FULL, *trims(8))
    for before, after in zip(levels, levels[1:], strict=False):
        assert (after.stories or 99) <= (before.stories or 99)
        assert (after.summary if after.summary is not None else 10**9) <= \
            (before.summary if before.summary is not None else 10**9)
    assert levels[-1] == Trim(1, 0)


def test_an_edition_that_cannot_fit_is_refused_not_sent_clipped(settings):
    settings = settings.model_copy(update={"postal_address": "x" * 100_000})
    with pytest.raises(TooLargeToSend, match="even its shortest form is over 96 KB"):
        _render(settings, _stories(EIGHT, 2, 100), EIGHT)


def test_a_normal_edition_is_not_touched(sample_engine, settings):
    window = week_window("2025-W05", settings.tz)
    with session_scope(sample_engine) as session:
        stories = fetch_window_stories(session, window)
    for regions in [("RU", "UA"), EIGHT]:
        selection = select_sections(stories, regions, per_region=5)
        variant = render_variant(selection=selection, window=window, edition_key="weekly-2025-W05",
                                 settings=settings)
        assert variant.trim == FULL and variant.sent_bytes < SEND_LIMIT_BYTES
        context = build_context(selection=selection, window=window, edition_key="weekly-2025-W05",
                                settings=settings, nonce=variant.nonce)
        html = inline_whole(get_template(settings.templates_dir, "weekly_digest/body.html").render(context),
                            nonce=variant.nonce, inliner=settings.css_inliner)
        assert variant.html == html
        assert "more stories online" not in variant.html and "more story online" not in variant.text
        for story in (s for section in selection.sections for s in section.stories):
            assert story.summary_text.split()[-1] in variant.text.replace("\n   ", " ")
