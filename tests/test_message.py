"""The MIME message: headers, injection, line lengths, DKIM, tokens."""

from datetime import UTC, datetime
from email import policy
from email.headerregistry import Address
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from worker.errors import HeaderInjectionError
from worker.render.message import Envelope, build_message, dkim_sign, message_bytes
from worker.render.personalise import PersonalDigest
from worker.tokens import ReaderLink, message_id, new_link_key, read_unsubscribe_token, unsubscribe_token

SENDER = Address("Melange News", "digest", "news.example")
EXPECTED_HEADERS = [
    "From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
    "List-Unsubscribe-Post", "MIME-Version", "Content-Type",
]
CONTROL = [chr(c) for c in range(32)] + [chr(c) for c in range(0x7F, 0xA0)] + ["\u2028", "\u2029"]


def _envelope(**over):
    values = dict(
        sender=SENDER, recipient_email="anna@example.org", recipient_name="Anna",
        message_id="<abc@news.example>", list_id="weekly.news.example",
        unsubscribe_url="https://news.example/unsubscribe/tok",
        date=datetime(2025, 2, 3, 7, tzinfo=UTC),
    )
    values.update(over)
    return Envelope(**values)


def _digest(subject="Weekly: Russia", text="Hello\n", html="<p>Hello</p>\n"):
    return PersonalDigest(subject=subject, html=html, text=text)


def _check_wire(data: bytes):
    assert b"\r\n" in data
    for line in data.split(b"\r\n"):
        assert len(line) <= 998
        assert b"\r" not in line and b"\n" not in line  # no bare CR or LF
    msg = BytesParser(policy=policy.default).parsebytes(data)
    assert not msg.defects
    for part in msg.walk():
        assert not part.defects
    return msg


@hsettings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=st.text(max_size=300), name=st.one_of(st.none(), st.text(max_size=120)),
       region=st.text(max_size=60))
def test_builder_raises_our_error_or_emits_clean_bytes(subject, name, region):
    full_subject = f"{subject} {region}".strip() or "x"
    try:
        msg = build_message(_digest(subject=full_subject, text="Hello\n\nBye\n", html="<p>Hello</p>"),
                            _envelope(recipient_name=name))
    except HeaderInjectionError:
        assert any(c in full_subject + (name or "") for c in CONTROL)
        return
    assert not any(c in full_subject + (name or "") for c in CONTROL)
    parsed = _check_wire(message_bytes(msg))
    assert list(parsed.keys()) == EXPECTED_HEADERS
    assert parsed["Subject"] == " ".join(full_subject.split())
    assert parsed["To"].addresses[0].addr_spec == "anna@example.org"
    # The stdlib may fold a long encoded display name into encoded words that decode
    # with a space between them; the characters themselves must survive.
    assert "".join(parsed["To"].addresses[0].display_name.split()) == "".join((name or "").split())
    plain, html = parsed.iter_parts()
    assert plain.get_content().replace("\r\n", "\n") == "Hello\n\nBye\n"
    assert html.get_content_type() == "text/html"


@pytest.mark.parametrize("field", ["recipient_name", "list_id", "unsubscribe_url", "message_id"])
@pytest.mark.parametrize("bad", ["\r\nBcc: victim@example.org", "\n", "\x00", "a\rb"])
def test_control_characters_in_any_header_input_are_refused(field, bad):
    with pytest.raises(HeaderInjectionError) as err:
        build_message(_digest(), _envelope(**{field: "x" + bad}))
    assert "control character or line break" in str(err.value)


def test_subject_injection_is_refused():
    with pytest.raises(HeaderInjectionError):
        build_message(_digest(subject="Weekly\r\nBcc: x@y"), _envelope())


def test_long_html_lines_are_wrapped_by_quoted_printable():
    html = "<p>" + "word " * 5000 + "</p>"
    data = message_bytes(build_message(_digest(html=html), _envelope()))
    msg = _check_wire(data)
    assert msg.get_body(("html",)).get_content().rstrip("\r\n") == html
    assert b"Content-Transfer-Encoding: quoted-printable" in data


def test_idn_domains_are_punycode_and_unicode_local_parts_use_smtputf8():
    msg = build_message(_digest(), _envelope(recipient_email="anna@bücher.example"))
    assert "anna@xn--bcher-kva.example" in message_bytes(msg).decode("ascii")
    utf8 = build_message(_digest(), _envelope(recipient_email="jürgen@bücher.example"))
    data = message_bytes(utf8)
    assert "jürgen@bücher.example".encode() in data
    from email.parser import Parser

    assert Parser(policy=policy.SMTPUTF8).parsestr(data.decode())["To"].addresses[0].username == "jürgen"


def test_list_unsubscribe_has_the_https_url_and_optional_mailto():
    msg = build_message(_digest(), _envelope(unsubscribe_mailto="unsub@news.example"))
    assert msg["List-Unsubscribe"] == (
        "<https://news.example/unsubscribe/tok>, <mailto:unsub@news.example?subject=unsubscribe>"
    )
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["List-Id"] == "<weekly.news.example>"


def test_message_ids_are_stable_distinct_and_keyed():
    a = message_id("k1", edition_key="weekly-2025-W05", subscriber=1, domain="news.example")
    assert a == message_id("k1", edition_key="weekly-2025-W05", subscriber=1, domain="news.example")
    assert a != message_id("k1", edition_key="weekly-2025-W05", subscriber=2, domain="news.example")
    assert a != message_id("k1", edition_key="weekly-2025-W06", subscriber=1, domain="news.example")
    assert a != message_id("k2", edition_key="weekly-2025-W05", subscriber=1, domain="news.example")
    assert a.startswith("<") and a.endswith("@news.example>") and len(a) == 40 + len("<@news.example>")


@given(st.one_of(st.integers(min_value=0, max_value=10**10 - 1), st.integers(min_value=10**10, max_value=10**15),
                 st.sampled_from([0, 1, 10**9, 10**10 - 1, 1111111111, 10**10, 10**12, 2**53])),
       st.one_of(st.just(""), st.builds(new_link_key), st.text(max_size=40)))
def test_unsubscribe_tokens_are_what_itsdangerous_makes(subscriber_id, key):
    from itsdangerous import URLSafeSerializer

    from worker.tokens import UNSUBSCRIBE_SALT

    assert unsubscribe_token("secret", subscriber_id, key) == URLSafeSerializer("secret", UNSUBSCRIBE_SALT).dumps(
        [subscriber_id, key])


def test_unsubscribe_tokens_round_trip_and_reject_tampering():
    token = unsubscribe_token("secret", 42, "k3y")
    assert read_unsubscribe_token("secret", token) == ReaderLink(42, "k3y")
    assert read_unsubscribe_token("other-secret", token) is None
    assert read_unsubscribe_token("secret", token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert read_unsubscribe_token("secret", "garbage") is None
    from itsdangerous import URLSafeSerializer

    foreign = URLSafeSerializer("secret", salt="something-else").dumps(42)
    assert read_unsubscribe_token("secret", foreign) is None
    assert read_unsubscribe_token("secret", URLSafeSerializer("secret", salt="newsletter.unsubscribe.v1").dumps("42")) is None
    # A link from before links carried the reader's key: the id alone, told apart.
    legacy = URLSafeSerializer("secret", salt="newsletter.unsubscribe.v1").dumps(42)
    assert read_unsubscribe_token("secret", legacy) == ReaderLink(42, None)


def test_dkim_signature_verifies_and_covers_list_unsubscribe_post(tmp_path):
    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    import base64

    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)
    data = message_bytes(build_message(_digest(), _envelope()))
    signed = dkim_sign(data, selector="mail", domain="news.example", key_file=str(key_file))

    def dns(name, timeout=5):
        assert name == b"mail._domainkey.news.example."
        return record

    assert dkim.verify(signed, dnsfunc=dns)
    signature = signed.split(b"\r\n\r\n")[0].decode()
    tags = dict(t.strip().split("=", 1) for t in " ".join(signature.split("DKIM-Signature:", 1)[1].split()).split(";") if "=" in t)
    signed_headers = tags["h"].replace(" ", "").split(":")
    assert "list-unsubscribe-post" in signed_headers and "list-unsubscribe" in signed_headers
    assert {"from", "to", "subject", "date", "message-id", "list-id"} <= set(signed_headers)
    tampered = signed.replace(b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Two-Click")
    assert not dkim.verify(tampered, dnsfunc=dns)


NAMES = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=80)


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.one_of(st.none(), NAMES), subject=NAMES, body=st.text(max_size=400),
       local=st.sampled_from(["anna", "o'neil", "a.b-c", "x+tag"]))
def test_the_skeleton_path_decodes_to_the_same_message_as_the_reference(name, subject, body, local):
    from worker.render.compose import Addressee, compose
    from worker.render.digest import RenderedVariant
    from worker.settings import Settings

    settings = Settings(from_address="Melange News <digest@news.example>", public_url="https://news.example",
                        unsubscribe_mailto="unsub@news.example")
    variant = RenderedVariant(
        edition_key="weekly-2025-W05", regions=("RU", "UA"), subject=" ".join(("Weekly " + subject).split()),
        html=f"<p>%%NL_GREETING%%</p><p>{body}</p><a href=\"%%NL_UNSUBSCRIBE_URL%%\">u</a> %%NL_EMAIL%%\n",
        text=f"%%NL_GREETING%%\n\n{body}\n%%NL_VIEW_ONLINE_URL%%\n", story_count=1, nonce="")
    addressee = Addressee(f"{local}@bücher.example", name, 42)
    now = datetime(2025, 2, 3, 7, tzinfo=UTC)
    fast = compose(variant, addressee, settings=settings, secret="k", now=now)
    slow = compose(variant, addressee, settings=settings, secret="k", now=now, reference=True)
    assert fast.envelope_to == slow.envelope_to == f"{local}@xn--bcher-kva.example"
    a, b = _check_wire(fast.data), _check_wire(slow.data)
    assert list(a.keys()) == list(b.keys()) == EXPECTED_HEADERS
    for header in EXPECTED_HEADERS[:-1]:
        if header == "To":
            assert a["To"].addresses[0].addr_spec == b["To"].addresses[0].addr_spec
            assert "".join(a["To"].addresses[0].display_name.split()) == \
                "".join(b["To"].addresses[0].display_name.split())
        else:
            assert str(a[header]) == str(b[header]), header
    for kind in ("plain", "html"):
        assert a.get_body((kind,)).get_content().replace("\r\n", "\n").rstrip("\n") == \
            b.get_body((kind,)).get_content().replace("\r\n", "\n").rstrip("\n")
