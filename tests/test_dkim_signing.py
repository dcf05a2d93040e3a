"""DKIM on the bytes that go to SMTP: the production (skeleton) path is signed and verifies,
From, Subject and the List-Unsubscribe pair are oversigned, Reply-To, Cc and Sender signed as
absent, and a second such field (or any of those three) added after signing breaks the signature."""

import base64
from datetime import UTC, datetime

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.data import add_subscribers, load_stories
from worker.delivery.pipeline import run_inline
from worker.delivery.plan import plan_edition
from worker.delivery.smtp import SmtpSender
from worker.digest import week_window
from worker.render.compose import Addressee, compose
from worker.render.digest import RenderedVariant

NOW = datetime(2025, 2, 3, 7, tzinfo=UTC)
SIGNED_ONCE = ["to", "date", "message-id", "list-id", "mime-version", "content-type"]
OVERSIGNED = ["from", "subject", "list-unsubscribe", "list-unsubscribe-post"]
# Never written, listed once: the signature covers their absence.
ABSENT = ["reply-to", "cc", "sender"]


@pytest.fixture(scope="module")
def key(tmp_path_factory):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path_factory.mktemp("dkim") / "dkim.pem"
    path.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    public = private.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    record = b"v=DKIM1; k=rsa; p=" + base64.b64encode(public)

    def dns(name, timeout=5):
        assert name == b"mail._domainkey.news.example."
        return record

    return path, dns


def _signed_settings(settings, key_path):
    return settings.model_copy(update={"dkim_selector": "mail", "dkim_domain": "news.example",
                                       "dkim_key_file": str(key_path),
                                       "from_address": "Melange News <digest@news.example>",
                                       "public_url": "https://news.example"})


def _variant():
    return RenderedVariant(edition_key="weekly-2025-W05", regions=("RU",), subject="Drone swarm – refinery fire",
                           html="<p>%%NLab12_GREETING%%</p><a href=\"%%NLab12_UNSUBSCRIBE_URL%%\">u</a>\n",
                           text="%%NLab12_GREETING%%\n%%NLab12_UNSUBSCRIBE_URL%%\n", story_count=1, nonce="ab12")


def _signed_headers(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("DKIM-Signature:")
    signature = " ".join(head.split("\r\nFrom:", 1)[0].split())
    tags = dict(t.strip().split("=", 1) for t in signature.split(":", 1)[1].split(";") if "=" in t)
    return tags["h"].replace(" ", "").split(":")


def _with_field(data: bytes, field: bytes, *, first: bool) -> bytes:
    """`field` added as a whole line at the top of the header block (as a relay prepends)
    or at its end (as a careless one appends)."""
    head, body = data.split(b"\r\n\r\n", 1)
    if first:
        sig_end = head.index(b"\r\nFrom:") + 2
        return head[:sig_end] + field + b"\r\n" + head[sig_end:] + b"\r\n\r\n" + body
    return head + b"\r\n" + field + b"\r\n\r\n" + body


@pytest.mark.parametrize("reference", [False, True], ids=["skeleton", "reference"])
def test_the_signature_verifies_and_oversigns_from_subject_and_list_unsubscribe(settings, key, reference):
    path, dns = key
    data = compose(_variant(), Addressee("anna@example.org", "Anna", 7), settings=_signed_settings(settings, path),
                   secret="k", now=NOW, reference=reference).data
    assert dkim.verify(data, dnsfunc=dns)
    signed = _signed_headers(data)
    for name in OVERSIGNED:
        assert signed.count(name) == 2, name
    for name in SIGNED_ONCE + ABSENT:
        assert signed.count(name) == 1, name


@pytest.mark.parametrize("field", [b"Subject: You won a prize", b"From: Bank <security@bank.example>",
                                   b"List-Unsubscribe: <https://evil.example/u>",
                                   b"List-Unsubscribe-Post: List-Unsubscribe=One-Click",
                                   # Absent from the message, signed as absent.
                                   b"Cc: everyone@evil.example", b"Reply-To: <reply@evil.example>",
                                   b"Sender: Bank <security@bank.example>"])
@pytest.mark.parametrize("first", [True, False], ids=["prepended", "appended"])
def test_a_signed_field_added_after_signing_breaks_the_signature(settings, key, field, first):
    path, dns = key
    data = compose(_variant(), Addressee("anna@example.org", "Anna", 7), settings=_signed_settings(settings, path),
                   secret="k", now=NOW).data
    assert not dkim.verify(_with_field(data, field, first=first), dnsfunc=dns)
    # A relay's trace field is not signed: adding it keeps the signature, so the failure
    # above is the oversigning's doing, not any change at all.
    assert dkim.verify(_with_field(data, b"Received: from relay.example by mx.example", first=first), dnsfunc=dns)


def test_the_bytes_the_smtp_server_receives_on_the_fast_path_verify(engine, smtp_settings, smtp_server, key,
                                                                     tmp_path):
    path, dns = key
    settings = _signed_settings(smtp_settings, path)
    load_stories(engine, tmp_path)
    ids = add_subscribers(engine, 4, sets=[("RU",), ("RU", "UA")])
    planned = plan_edition(engine, key="weekly-2025-W05", kind="weekly",
                           window=week_window("2025-W05", settings.tz), now=NOW)
    sender = SmtpSender(settings)
    try:
        run_inline(engine, settings, planned.edition_id, sender)
    finally:
        sender.close()
    assert sorted(r.rcpt for r in smtp_server.received) == sorted(email for _, email, _ in ids)
    for received in smtp_server.received:
        assert received.data.startswith(b"DKIM-Signature:")
        assert dkim.verify(received.data, dnsfunc=dns)
        assert _signed_headers(received.data).count("subject") == 2
        doubled = _with_field(received.data, b"Subject: Urgent: verify your account", first=True)
        assert not dkim.verify(doubled, dnsfunc=dns)
