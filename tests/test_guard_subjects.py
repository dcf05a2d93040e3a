"""Subjects: short, the top story's title, no brand, and decoded the same by every reader.

A folded line with a plain word and an encoded-word on either side of the fold decoded
with two spaces (or none) before the date's dash in readers that unfold before decoding;
these tests decode every subject three ways and compare with the text meant."""

import unicodedata
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesParser
from itertools import permutations

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.test_headers import NOW, SETTINGS, _variant
from worker.digest import select_sections, week_window
from worker.digest.queries import fetch_window_stories
from worker.render.compose import Addressee, compose
from worker.render.digest import SUBJECT_MAX, headline, render_variant
from worker.render.headers import unstructured
from worker.store.db import session_scope
from worker.text import contains_control


def _decodings(line: str) -> dict[str, str]:
    """`Subject: ...\r\n` as three readers show it."""
    message = BytesParser(policy=policy.default).parsebytes((line + "\r\n").encode("ascii"))
    value = line.split(":", 1)[1].removesuffix("\r\n").replace("\r\n", "").lstrip()  # RFC 5322 unfolding
    parts = decode_header(value)
    joined = "".join(p.decode(c or "ascii") if isinstance(p, bytes) else p for p, c in parts)
    return {"policy.default": str(message["Subject"]), "make_header": str(make_header(parts)),
            "decode_header joined": joined.strip()}


# The old subjects: 8 of the 25 sample ones folded just before the dash's encoded-word.
OLD_SAMPLES = [f"Melange News Weekly: {regions}, 27 Jan – 2 Feb 2025" for regions in (
    "Russia, Ukraine", "Germany, United Kingdom, United States", "France, United Kingdom, Germany",
    "United Kingdom, France", "Poland, Ukraine, Germany", "United Kingdom, United States",
    "Russia, Ukraine, Germany, France, United Kingdom, United States, China, Poland",
)]


@pytest.mark.parametrize("subject", OLD_SAMPLES)
def test_a_fold_next_to_an_encoded_word_decodes_to_the_text_in_every_reader(subject):
    for reader, shown in _decodings(unstructured("Subject", subject)).items():
        assert shown == subject, reader


WORDS = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Zs")), min_size=1,
                max_size=30)
TEXTS = st.lists(st.one_of(WORDS, st.sampled_from(["–", "—", "·", "=?", "?=", "Jan", "2025", "日本語", "🙂"])),
                 min_size=1, max_size=40).map(" ".join)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=TEXTS)
def test_any_subject_decodes_to_exactly_its_text(text):
    text = " ".join(text.split())
    line = unstructured("Subject", text)
    assert all(len(row) <= 78 for row in line.split("\r\n"))
    for reader, shown in _decodings(line).items():
        assert shown == text, reader


@hsettings(max_examples=300, deadline=None)
@given(title=st.text(min_size=1, max_size=400))
def test_a_headline_is_at_most_70_characters_on_one_line_and_cut_at_a_word(title):
    shown = headline(title)
    assert len(shown) <= SUBJECT_MAX
    assert not contains_control(shown) and "  " not in shown
    # Control characters are a space; invisible format characters (Cf, but the joiners) go.
    visible = "".join(c for c in title if unicodedata.category(c) != "Cf" or c in "\u200c\u200d")
    plain = " ".join("".join(" " if contains_control(c) else c for c in visible).split())
    if len(plain) <= SUBJECT_MAX:
        assert shown == plain
    else:
        assert shown.endswith("…")
        kept = shown[:-1]
        assert plain.startswith(kept)
        # Cut at a word boundary, unless the first word alone is too long.
        assert " " not in plain[:SUBJECT_MAX - 1] or plain[len(kept):][:1] in (" ", ",", ";", ":", ".", "-", "–", "—")


def test_a_headline_cuts_realistic_titles_at_a_word_with_an_ellipsis():
    assert headline("Russia Proposes Nuclear Disarmament Talks Including France and UK Amidst Tensions with NATO") \
        == "Russia Proposes Nuclear Disarmament Talks Including France and UK…"
    assert headline("Short title") == "Short title"
    assert headline("a\r\nBcc: x@y\x00z") == "a Bcc: x@y z"
    assert headline("Берлин " * 20) == ("Берлин " * 10).strip() + "…"
    assert headline("x" * 200) == "x" * 69 + "…"


SAMPLE_REGIONS = ("RU", "UA", "DE", "FR", "GB", "US", "CN", "PL", "IT")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_every_sample_subject_is_short_plain_and_decodes_to_itself(sample_engine, settings):
    window = week_window("2025-W05", settings.tz)
    with session_scope(sample_engine) as session:
        week = fetch_window_stories(session, window)
    seen = set()
    for regions in [*permutations(SAMPLE_REGIONS, 1), *permutations(SAMPLE_REGIONS, 2), SAMPLE_REGIONS]:
        selection = select_sections(week, regions, per_region=5)
        if selection.is_empty:
            continue
        variant = render_variant(selection=selection, window=window, edition_key="weekly-2025-W05",
                                 settings=settings)
        for reference in (False, True):
            data = compose(variant, Addressee("anna@example.org", "Anna", 1), settings=settings, secret="k",
                           now=NOW, reference=reference).data
            head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
            line = next(f for f in head.replace("\r\n ", "\0").split("\r\n") if f.startswith("Subject:"))
            for reader, shown in _decodings(line.replace("\0", "\r\n ")).items():
                assert shown == variant.subject, reader
        assert len(variant.subject) <= SUBJECT_MAX and not contains_control(variant.subject)
        assert settings.newsletter_name not in variant.subject
        seen.add(variant.subject)
    assert len(seen) >= 5


@pytest.mark.parametrize("title", [
    "x" * 5000, "日本語のニュース " * 40, "🙂" * 100, "a\r\nBcc: victim@evil.example", "\u2028\u2029\x85 line",
    "=?utf-8?b?DQpCY2M6IHhAeQ==?= " * 5, "  lots   of   space  " * 10,
])
def test_hostile_titles_make_short_subjects_that_decode_to_themselves(title):
    subject = headline(title)
    assert 0 < len(subject) <= SUBJECT_MAX and not contains_control(subject)
    for reference in (False, True):
        data = compose(_variant(subject), Addressee("anna@example.org", "Anna", 7), settings=SETTINGS,
                       secret="k", now=NOW, reference=reference).data
        msg = BytesParser(policy=policy.default).parsebytes(data)
        assert str(msg["Subject"]) == subject
