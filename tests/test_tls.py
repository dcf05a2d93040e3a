"""TLS fails closed: no STARTTLS, a self-signed or wrong-host certificate: nothing sent,
no credentials transmitted, and the error says why."""

import ssl

import pytest
from pydantic import SecretStr

from tests.support.certs import make_certs
from tests.support.smtp import SmtpServer
from worker.delivery.outcome import Outcome
from worker.delivery.senders import Outgoing
from worker.delivery.smtp import PLAIN_AUTH_REFUSED, SmtpSender
from worker.settings import Settings

MSG = Outgoing("digest@news.example", "r@example.org", b"Subject: hi\r\n\r\nHello\r\n", "<m@news.example>")
CANARY = "canary-password-7f3a"


@pytest.fixture
def certs(tmp_path, monkeypatch):
    made = make_certs(tmp_path)
    # The client trusts only our test CA (the default context reads SSL_CERT_FILE).
    monkeypatch.setenv("SSL_CERT_FILE", str(made["ca"].cert))
    return made


def _server(pair):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pair.cert, pair.key)
    return SmtpServer(tls_context=ctx, require_starttls=True, auth={"digest": CANARY}).start()


def _send(server, **over):
    values = dict(email_backend="smtp", smtp_host="localhost", smtp_port=server.port, smtp_timeout=3,
                  smtp_security="starttls", smtp_username="digest", smtp_password=SecretStr(CANARY))
    values.update(over)
    sender = SmtpSender(Settings(**values))
    try:
        return sender.send(MSG)
    finally:
        sender.close()


def test_a_verified_certificate_sends_and_authenticates(certs):
    server = _server(certs["good"])
    try:
        result = _send(server)
    finally:
        server.stop()
    assert result.outcome is Outcome.SENT
    assert server.auth_attempts == [("digest", CANARY)] and len(server.received) == 1


@pytest.mark.parametrize(("pair", "reason"), [
    ("self", "TLS failed: self-signed certificate"),
    ("wrong", "TLS failed: Hostname mismatch, certificate is not valid for 'localhost'."),
])
def test_an_unverifiable_certificate_sends_nothing_and_no_credentials(certs, pair, reason):
    server = _server(certs[pair])
    try:
        result = _send(server)
    finally:
        server.stop()
    assert (result.outcome, result.connection_failed) == (Outcome.SENDER, True)
    assert result.reply == reason
    assert server.received == [] and server.auth_attempts == []


def test_starttls_not_offered_pauses_the_edition_with_the_reason(engine, smtp_settings, smtp_server, tmp_path):
    from datetime import UTC, datetime

    from tests.support.data import add_subscribers, load_stories
    from worker.delivery.pipeline import run_inline
    from worker.delivery.plan import get_edition, plan_edition
    from worker.digest import week_window

    load_stories(engine, tmp_path)
    add_subscribers(engine, 5)
    settings = smtp_settings.model_copy(update={"smtp_security": "starttls", "smtp_username": "digest",
                                                "smtp_password": SecretStr(CANARY)})
    planned = plan_edition(engine, key="weekly-2025-W05", kind="weekly",
                           window=week_window("2025-W05", settings.tz), now=datetime.now(UTC))
    sender = SmtpSender(settings)
    run_inline(engine, settings, planned.edition_id, sender)
    edition = get_edition(engine, planned.edition_id)
    assert edition.state == "paused"
    assert edition.reason == ("paused: sender refused: server does not offer STARTTLS "
                              "(NEWSLETTER_SMTP_SECURITY=starttls)")
    assert smtp_server.received == [] and smtp_server.auth_attempts == []


def _implicit_server(pair, **kwargs):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pair.cert, pair.key)
    return SmtpServer(implicit_tls=ctx, auth={"digest": CANARY}, **kwargs).start()


def test_implicit_tls_sends_and_authenticates_over_tls_from_the_first_byte(certs):
    server = _implicit_server(certs["good"])
    try:
        result = _send(server, smtp_security="tls")
    finally:
        server.stop()
    assert result.outcome is Outcome.SENT
    assert server.auth_attempts == [("digest", CANARY)] and len(server.received) == 1


@pytest.mark.parametrize(("pair", "reason"), [
    ("self", "TLS failed: self-signed certificate"),
    ("wrong", "TLS failed: Hostname mismatch, certificate is not valid for 'localhost'."),
])
def test_implicit_tls_with_an_unverifiable_certificate_sends_nothing(certs, pair, reason):
    server = _implicit_server(certs[pair])
    try:
        result = _send(server, smtp_security="tls")
    finally:
        server.stop()
    assert (result.outcome, result.connection_failed, result.reply) == (Outcome.SENDER, True, reason)
    assert server.received == [] and server.auth_attempts == []


def test_a_password_is_never_sent_without_tls_unless_the_operator_allows_it():
    server = SmtpServer(auth={"digest": CANARY}).start()
    try:
        refused = _send(server, smtp_security="none")
        connections_when_refused = server.connections
        allowed = _send(server, smtp_security="none", smtp_allow_plain_auth=True)
    finally:
        server.stop()
    assert (refused.outcome, refused.connection_failed) == (Outcome.SENDER, True)
    assert refused.reply == PLAIN_AUTH_REFUSED and "NEWSLETTER_SMTP_ALLOW_PLAIN_AUTH" in refused.reply
    assert connections_when_refused == 0  # not even connected
    assert allowed.outcome is Outcome.SENT
    assert server.auth_attempts == [("digest", CANARY)] and len(server.received) == 1


def test_no_username_needs_no_tls():
    server = SmtpServer().start()
    try:
        result = _send(server, smtp_security="none", smtp_username="", smtp_password=SecretStr(""))
    finally:
        server.stop()
    assert result.outcome is Outcome.SENT


def test_plain_auth_refused_pauses_the_edition_with_the_reason(engine, smtp_settings, smtp_server, tmp_path):
    from datetime import UTC, datetime

    from tests.support.data import add_subscribers, load_stories
    from worker.delivery.pipeline import run_inline
    from worker.delivery.plan import get_edition, plan_edition
    from worker.digest import week_window

    load_stories(engine, tmp_path)
    add_subscribers(engine, 5)
    settings = smtp_settings.model_copy(update={"smtp_username": "digest", "smtp_password": SecretStr(CANARY)})
    planned = plan_edition(engine, key="weekly-2025-W05", kind="weekly",
                           window=week_window("2025-W05", settings.tz), now=datetime.now(UTC))
    run_inline(engine, settings, planned.edition_id, SmtpSender(settings))
    edition = get_edition(engine, planned.edition_id)
    assert edition.state == "paused"
    assert edition.reason == f"paused: sender refused: {PLAIN_AUTH_REFUSED}"
    assert smtp_server.received == [] and smtp_server.auth_attempts == [] and smtp_server.connections == 0
