"""The name EHLO gives: NEWSLETTER_EHLO_NAME, else a fully qualified host name, else the
From domain; checked when settings load, and what the real SMTP server hears."""

import socket

import pytest

from tests.support.smtp import SmtpServer
from worker.delivery.outcome import Outcome, Outgoing
from worker.delivery.smtp import SmtpSender
from worker.errors import ConfigError
from worker.settings import Settings, load_settings

MSG = b"From: digest@news.example\r\nTo: anna@example.org\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
def server():
    server = SmtpServer()
    handler = server._controller.handler
    heard = server.ehlo_names = []
    original = handler.handle_EHLO

    # The same parameter names as the handler's own: aiosmtpd inspects them.
    async def handle_EHLO(server, session, envelope, hostname, responses):  # noqa: N802
        heard.append(hostname)
        return await original(server, session, envelope, hostname, responses)

    handler.handle_EHLO = handle_EHLO
    server.start()
    yield server
    server.stop()


def _send(server, **settings):
    config = Settings(smtp_host="127.0.0.1", smtp_port=server.port, smtp_timeout=5, email_backend="smtp",
                      **settings)
    sender = SmtpSender(config)
    try:
        result = sender.send(Outgoing("digest@news.example", "anna@example.org", MSG, "<m@news.example>"))
    finally:
        sender.close()
    assert result.outcome is Outcome.SENT, result
    return server.ehlo_names


@pytest.mark.parametrize("name", ["mail.news.example", "MX-1.Example.ORG", "[192.0.2.25]", "[IPv6:2001:db8::25]"])
def test_the_configured_name_is_what_the_server_hears(server, name):
    assert _send(server, ehlo_name=name) == [name]


def test_a_fully_qualified_host_name_is_the_default(server, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "worker-3.prod.news.example")
    assert _send(server, **{"from": "News <digest@news.example>"}) == ["worker-3.prod.news.example"]


@pytest.mark.parametrize("host", ["3f9c2a1b7e4d", "localhost", "", "worker 1", "10.0.0.7"])
def test_a_host_name_that_is_not_fully_qualified_gives_way_to_the_from_domain(server, monkeypatch, host):
    # A container's host name is a random id: a strict relay refuses it.
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    assert _send(server, **{"from": "News <digest@news.example>"}) == ["news.example"]


def test_an_international_from_domain_is_given_in_punycode(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "container")
    assert Settings(**{"from": "News <digest@bücher.example>"}).helo_name == "xn--bcher-kva.example"


@pytest.mark.parametrize("value", [
    "localhost", "mail", "mail.example.org\r\nMAIL FROM:<x@evil.example>", "mail example.org", "mail.example.org ",
    "-mail.example.org", "mail..example.org", "mail.example.org.", "mäil.example.org", "192.0.2.1",
    "[192.0.2.256]", "[192.0.2]", "[IPv6:zz::1]", "[2001:db8::1]", "[IPv6:192.0.2.1]", "x" * 64 + ".example",
    "mail.example.org\x00", "mail.example.org\u2028",
])
def test_a_name_that_is_not_a_host_name_or_an_address_literal_is_refused_at_load(value):
    with pytest.raises(ConfigError) as caught:
        load_settings({"NEWSLETTER_EHLO_NAME": value})
    assert "NEWSLETTER_EHLO_NAME" in str(caught.value)
    assert "fully qualified host name" in str(caught.value)


def test_the_setting_loads_from_the_environment(monkeypatch):
    monkeypatch.setenv("NEWSLETTER_EHLO_NAME", "mail.news.example")
    assert load_settings().helo_name == "mail.news.example"
