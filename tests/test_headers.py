"""Header values from outside are written as data: encoded-words in a name, a region name
or the From are never decoded into header lines, on the fast and the reference path."""

import base64
import email
import re
from datetime import UTC, datetime
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesParser
from email.policy import compat32

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.support.data import load_stories
from worker.errors import ConfigError, HeaderInjectionError
from worker.render.compose import Addressee, compose
from worker.render.digest import RenderedVariant
from worker.render.headers import (
    DIGEST_FIELDS,
    check_header_block,
    encoded_words,
    encoded_words_at_spaces,
    unstructured,
)
from worker.settings import Settings, load_settings
from worker.text import visible_line

NOW = datetime(2025, 2, 3, 7, tzinfo=UTC)


def _b(raw: bytes, charset="utf-8") -> str:
    return f"=?{charset}?b?{base64.b64encode(raw).decode()}?="


INJECTIONS = [
    _b(b"x\r\nBcc: victim@evil.example\r\n"),
    _b(b"x\r\nBcc: victim@evil.example"),
    _b(b"\r\n\r\n<html>body takeover"),
    _b(b"Anna\x00"),
    _b(b"x\nReply-To: evil@evil.example", "ISO-8859-1"),
    "=?utf-8?q?x=0D=0ABcc:_victim@evil.example?=",
    "=?UTF-8?Q?x=0ABcc=3A_victim=40evil.example?=",
    "Anna " + _b(b"\r\nBcc: v@evil.example") + " Smith",
    '"' + _b(b"\r\nBcc: v@evil.example") + '"',
    _b("Jürgen\r\nBcc: v@evil.example".encode()) * 3,
    "=?utf-8*en?b?" + base64.b64encode(b"\r\nBcc: v@e.example").decode() + "?=",
]

SETTINGS = Settings(from_address="Melange News <digest@news.example>", public_url="https://news.example")


def _variant(subject="Weekly: Russia"):
    return RenderedVariant(edition_key="weekly-2025-W05", regions=("RU",), subject=subject,
                           html="<p>%%NLab12_GREETING%%</p>\n", text="%%NLab12_GREETING%%\n", story_count=1,
                           nonce="ab12")


def _parse(data: bytes):
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert not msg.defects
    return msg


def _head(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0]


def _raw(data: bytes, field: str) -> str:
    """The field's value as written, unfolded."""
    return email.message_from_bytes(data, policy=compat32)[field].replace("\r\n", "")


def _shown_subject(data: bytes) -> str:
    # RFC 2047 6.2: white space between adjacent encoded-words is not shown (this Python's
    # policy.default parser keeps it, so decode_header, which follows the RFC, is used here).
    return str(make_header(decode_header(_raw(data, "Subject"))))


def _shown_name(data: bytes) -> str:
    phrase, _, _ = _raw(data, "To").rpartition(" <")
    if phrase.startswith('"'):
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return _shown_subject_of(phrase)


def _shown_subject_of(raw: str) -> str:
    return str(make_header(decode_header(raw)))


@pytest.mark.parametrize("reference", [False, True], ids=["skeleton", "reference"])
@pytest.mark.parametrize("name", INJECTIONS)
def test_an_encoded_word_in_a_name_is_written_as_the_name_itself(name, reference):
    composed = compose(_variant(), Addressee("anna@example.org", name, 7), settings=SETTINGS, secret="k",
                       now=NOW, reference=reference)
    head = _head(composed.data)
    assert b"Bcc" not in head and b"Reply-To" not in head and b"<html>" not in composed.data
    msg = _parse(composed.data)
    assert list(msg.keys()) == list(DIGEST_FIELDS)
    assert msg["To"].addresses[0].addr_spec == "anna@example.org"
    # What a mail client shows is the literal text the reader typed, not what it would decode to.
    assert _shown_name(composed.data) == " ".join(name.split())
    assert composed.envelope_to == "anna@example.org"


@pytest.mark.parametrize("reference", [False, True], ids=["skeleton", "reference"])
@pytest.mark.parametrize("injection", INJECTIONS[:6])
def test_an_encoded_word_in_the_subject_is_written_as_text(injection, reference):
    subject = f"Weekly: {injection}, Ukraine"
    composed = compose(_variant(subject), Addressee("anna@example.org", "Anna", 7), settings=SETTINGS,
                       secret="k", now=NOW, reference=reference)
    assert b"Bcc" not in _head(composed.data)
    msg = _parse(composed.data)
    assert list(msg.keys()) == list(DIGEST_FIELDS)
    assert _shown_subject(composed.data) == subject


@pytest.mark.parametrize("reference", [False, True], ids=["skeleton", "reference"])
def test_a_story_title_reaches_the_subject_as_text(engine, settings, tmp_path, reference):
    import json

    from worker.digest import select_sections, week_window
    from worker.digest.queries import fetch_window_stories
    from worker.ingest import import_sources
    from worker.render.digest import render_variant
    from worker.store.db import session_scope

    evil = INJECTIONS[0]
    path = tmp_path / "evil.json"
    path.write_text(json.dumps([{"id": "evil", "url": "https://evil.example/a", "regions": ["RU"],
                                 "title": f"{evil} {INJECTIONS[5]}", "summary": "s",
                                 "published_at": "2025-01-31T23:00:00Z", "source": "wire"}]))
    assert import_sources(engine, [str(path)]).added == 1
    window = week_window("2025-W05", settings.tz)
    with session_scope(engine) as session:
        stories = fetch_window_stories(session, window, ("RU",))
    variant = render_variant(selection=select_sections(stories, ("RU",), per_region=5), window=window,
                             edition_key="weekly-2025-W05", settings=settings)
    composed = compose(variant, Addressee("anna@example.org", "Anna", 1), settings=settings, secret="k",
                       now=NOW, reference=reference)
    assert b"Bcc" not in _head(composed.data)
    msg = _parse(composed.data)
    assert list(msg.keys()) == list(DIGEST_FIELDS)
    assert _shown_subject(composed.data) == variant.subject
    assert variant.subject.startswith(evil) and len(variant.subject) <= 70


ENCODED_FRAGMENT = st.builds(
    lambda text, charset, q: (f"=?{charset}?q?{text.encode('utf-8').hex('=')}?=" if q
                              else _b(text.encode("utf-8"), charset)),
    st.text(max_size=20), st.sampled_from(["utf-8", "UTF-8", "iso-8859-1", "us-ascii", "x-unknown"]), st.booleans())
SAFE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)
NAMES = st.lists(st.one_of(ENCODED_FRAGMENT, SAFE_TEXT, st.sampled_from(['"', "\\", "=?", "?=", " ", "<", ">"])),
                 max_size=6).map("".join)


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=NAMES, subject=NAMES, reference=st.booleans())
def test_no_name_or_subject_decodes_to_anything_but_itself(name, subject, reference):
    subject = " ".join(("Weekly " + subject).split())
    composed = compose(_variant(subject), Addressee("anna@example.org", name or None, 7), settings=SETTINGS,
                       secret="k", now=NOW, reference=reference)
    for line in composed.data.split(b"\r\n"):
        assert len(line) <= 998
    msg = _parse(composed.data)
    assert list(msg.keys()) == list(DIGEST_FIELDS)
    assert _shown_subject(composed.data) == subject
    # Invisible format characters never reach a header (docs/security.md), whatever is stored.
    assert _shown_name(composed.data) == " ".join(visible_line(name).split())
    check_header_block(_head(composed.data), DIGEST_FIELDS)


def test_encoded_words_we_write_decode_to_exactly_the_text():
    from email.header import decode_header, make_header

    for text in ["", "a", "é" * 200, "日本語のテキスト" * 30, "x\u200by", "=?utf-8?b?DQo=?="]:
        assert all(len(word) <= 75 for word in encoded_words(text))
        assert str(make_header(decode_header(" ".join(encoded_words(text))))) == text
        assert all(len(word) <= 75 for word in encoded_words_at_spaces(text))
        assert str(make_header(decode_header(" ".join(encoded_words_at_spaces(text))))) == text
    for line in unstructured("Subject", "日本語のテキスト" * 30).split("\r\n"):
        assert len(line) <= 78


GOOD = (b"From: a@b.example\r\nTo: c@d.example\r\nSubject: hi\r\nDate: x\r\nMessage-ID: <m@b>\r\n"
        b"List-Id: <l.b>\r\nList-Unsubscribe:\r\n <https://b/u>\r\nList-Unsubscribe-Post: x\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/alternative;\r\n boundary=\"b\"")


@pytest.mark.parametrize("block, why", [
    (GOOD.replace(b"Subject: hi", b"Subject: hi\r\nBcc: v@evil.example"), "unexpected header fields"),
    (GOOD.replace(b"Subject: hi", b"Subject: " + _b(b"hi\r\nBcc: v@e").encode()), "decodes to a control"),
    (GOOD.replace(b"To: c@d.example", b"To: =?utf-8?q?x=00?= <c@d.example>"), "decodes to a control"),
    (GOOD.replace(b"Subject: hi", b"Subject: h\x00i"), "malformed"),
    (GOOD.replace(b"Subject: hi", b"Subject: h\ri"), "bare CR"),
    (GOOD.replace(b"Subject: hi", b"Subject: h\x1bi"), "control character"),
    (GOOD.replace(b"Subject: hi", b"Subject hi"), "not a field"),
    (b" folded\r\n" + GOOD, "continuation"),
    (GOOD.replace(b"Subject: hi", b"Subject: " + b"x" * 1000), "998"),
    (GOOD.replace(b"From: a@b.example\r\n", b""), "unexpected header fields"),
])
def test_the_written_header_block_is_checked(block, why):
    check_header_block(GOOD, DIGEST_FIELDS)
    with pytest.raises(HeaderInjectionError, match=why):
        check_header_block(block, DIGEST_FIELDS)


def test_a_from_whose_encoded_name_decodes_to_a_line_break_is_a_configuration_error():
    with pytest.raises(ConfigError, match="NEWSLETTER_FROM"):
        load_settings({"NEWSLETTER_FROM": _b(b"News\x00") + " <news@example.org>"})
    with pytest.raises(ConfigError, match="NEWSLETTER_FROM"):
        load_settings({"NEWSLETTER_FROM": _b(b"News\r\nBcc: v@e.example") + " <news@example.org>"})
    assert load_settings({"NEWSLETTER_FROM": _b("Mélange".encode()) + " <news@example.org>"}).sender.display_name \
        == "Mélange"


@pytest.mark.parametrize("name, value", [
    ("NEWSLETTER_LIST_ID", "weekly.example.org>\r\nBcc: v@e"), ("NEWSLETTER_LIST_ID", "x=?utf-8?b?DQo=?="),
    ("NEWSLETTER_UNSUBSCRIBE_MAILTO", "a@b.example?subject=x>, <https://evil.example"),
    ("NEWSLETTER_PUBLIC_URL", "https://news.example/a b"),
])
def test_header_settings_that_could_break_a_header_are_refused(name, value):
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_a_hostile_name_reaches_the_smtp_server_as_one_message_to_one_recipient(engine, smtp_settings, smtp_server,
                                                                                  tmp_path):
    from tests.support.data import add_subscribers
    from worker.delivery.pipeline import run_inline
    from worker.delivery.plan import plan_edition
    from worker.delivery.smtp import SmtpSender
    from worker.digest import week_window
    from worker.store.db import session_scope
    from worker.store.models import Subscriber

    load_stories(engine, tmp_path)
    ids = add_subscribers(engine, 3, sets=[("RU",)])
    with session_scope(engine) as session:
        for (sid, _, _), name in zip(ids, INJECTIONS, strict=False):
            session.get(Subscriber, sid).name = name
    planned = plan_edition(engine, key="weekly-2025-W05", kind="weekly",
                           window=week_window("2025-W05", smtp_settings.tz), now=NOW)
    sender = SmtpSender(smtp_settings)
    try:
        run_inline(engine, smtp_settings, planned.edition_id, sender)
    finally:
        sender.close()
    assert sorted(r.rcpt for r in smtp_server.received) == sorted(email for _, email, _ in ids)
    for received, name in zip(sorted(smtp_server.received, key=lambda r: r.rcpt), INJECTIONS, strict=False):
        assert b"Bcc" not in _head(received.data)
        assert list(received.message.keys()) == list(DIGEST_FIELDS)
        assert _shown_name(received.data) == " ".join(name.split())


LONG_NAMES = [
    "Александра Константиновна Веселовская Длинноимённая Ивановна",
    "Maximilian-Alexander von Hohenzollern-Sigmaringen 🙂 Jürgen",
    "Παναγιώτης Αλεξανδρόπουλος Κωνσταντινίδης Παπαδόπουλος",
    "ดวงใจ สุขสวัสดิ์ ศรีประเสริฐ วงศ์สวัสดิ์ รัตนพันธ์",
]


@pytest.mark.parametrize("reference", [False, True], ids=["skeleton", "reference"])
@pytest.mark.parametrize("name", LONG_NAMES)
def test_a_long_name_is_split_into_encoded_words_at_spaces_never_inside_a_word(name, reference):
    sender = f"{name} <digest@news.example>"
    settings = SETTINGS.model_copy(update={"from_address": sender})
    composed = compose(_variant(), Addressee("anna@example.org", name, 7), settings=settings, secret="k", now=NOW,
                       reference=reference)
    msg = _parse(composed.data)
    for field in ("From", "To"):
        raw = _raw(composed.data, field)
        words = re.findall(r"=\?utf-8\?b\?([^?]*)\?=", raw)
        assert len(words) > 1, raw  # long enough to need several
        decoded = [base64.b64decode(w).decode() for w in words]
        # Each encoded-word but the last ends at a space, which it carries itself.
        assert all(d.endswith(" ") and not d.startswith(" ") for d in decoded[:-1]), decoded
        assert "".join(decoded) == name
        # Python's address parser reads every word whole (it keeps the folding white space
        # between encoded-words as a second space, gh-128110; RFC 2047 readers drop it).
        assert msg[field].addresses[0].display_name.split() == name.split()
        assert str(make_header(decode_header(raw.rpartition(" <")[0]))) == name
    assert _shown_name(composed.data) == name
