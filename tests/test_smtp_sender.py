"""SmtpSender against a real SMTP server with injected faults: each result class."""

import pytest

from tests.support.smtp import SmtpServer
from worker.delivery.outcome import Outcome
from worker.delivery.senders import Outgoing
from worker.delivery.smtp import SmtpSender
from worker.settings import Settings

MSG = b"From: a@news.example\r\nTo: r@example.org\r\nSubject: hi\r\n\r\nHello\r\n.leading dot\r\n"


@pytest.fixture(params=[True, False], ids=["pipelining", "no-pipelining"])
def server(request):
    """Both ways of talking: MAIL/RCPT/DATA pipelined (RFC 2920) and one by one."""
    srv = SmtpServer().start()
    srv.plan.pipelining = request.param
    yield srv
    srv.stop()


def _sender(server, **over):
    values = dict(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=server.port, smtp_timeout=2)
    values.update(over)
    return SmtpSender(Settings(**values))


def _out(rcpt="r@example.org"):
    return Outgoing("digest@news.example", rcpt, MSG, "<m@news.example>")


def test_250_is_sent_and_dots_are_escaped(server):
    sender = _sender(server)
    result = sender.send(_out())
    assert (result.outcome, result.code) == (Outcome.SENT, 250)
    assert server.received[0].data.replace(b"\r\n", b"\n").endswith(b"Hello\n.leading dot\n")
    sender.close()


def test_one_connection_is_reused_and_capped(server):
    sender = _sender(server, smtp_max_per_connection=3)
    for n in range(7):
        assert sender.send(_out(f"r{n}@example.org")).outcome is Outcome.SENT
    sender.close()
    assert len(server.received) == 7 and server.connections == 3


@pytest.mark.parametrize(("where", "reply", "outcome", "code"), [
    ("greeting", "421 4.3.2 try again later", Outcome.TEMPORARY, 421),
    ("rcpt", "451 4.7.1 greylisted", Outcome.TEMPORARY, 451),
    ("rcpt", "552 5.2.2 mailbox full", Outcome.TEMPORARY, 552),
    ("rcpt", "550 5.1.1 no such user", Outcome.PERMANENT, 550),
    ("rcpt", "553 5.1.3 bad address", Outcome.PERMANENT, 553),
    ("rcpt", "550 5.7.1 relaying denied", Outcome.SENDER, 550),
    ("mail", "553 5.1.8 sender rejected", Outcome.SENDER, 553),
    ("data", "554 5.7.1 message refused as spam", Outcome.SENDER, 554),
    ("data", "451 4.3.0 local error", Outcome.TEMPORARY, 451),
    ("data", "552 5.3.4 message too big", Outcome.TEMPORARY, 552),
])
def test_each_reply_is_classified(server, where, reply, outcome, code):
    rcpt = "r@example.org"
    if where == "greeting":
        server.plan.greeting = reply
    elif where == "mail":
        server.plan.mail = reply
    elif where == "rcpt":
        server.plan.rcpt[rcpt] = reply
    else:
        server.plan.data[rcpt] = reply
    result = _sender(server).send(_out(rcpt))
    assert (result.outcome, result.code) == (outcome, code)
    assert result.connection_failed == (where == "greeting")
    assert server.received == []


def test_connection_dropped_after_the_final_dot_is_unknown(server):
    server.plan.data["r@example.org"] = "drop"
    result = _sender(server).send(_out())
    assert result.outcome is Outcome.UNKNOWN
    assert result.reply.startswith("no reply after end of data")
    assert len(server.dropped) == 1  # the server did get the whole message


@pytest.mark.slow
def test_a_server_that_never_answers_times_out_as_unknown_after_data(server):
    server.plan.data["r@example.org"] = "hang"
    result = _sender(server, smtp_timeout=0.5).send(_out())
    assert result.outcome is Outcome.UNKNOWN and "timed out" in result.reply


def test_a_refused_connection_is_temporary_and_connection_level():
    sender = SmtpSender(Settings(email_backend="smtp", smtp_host="127.0.0.1", smtp_port=1, smtp_timeout=1))
    result = sender.send(_out())
    assert result.outcome is Outcome.TEMPORARY and result.connection_failed
    # Which relay, for the operator reading `status`: a wrong host or port is the usual cause.
    assert result.reply.startswith("connection failed to 127.0.0.1:1: ConnectionRefusedError")


def test_an_idle_connection_closed_by_the_server_is_reopened(server):
    server.plan.close_after_each = True
    sender = _sender(server)
    import time

    for n in range(3):
        assert sender.send(_out(f"r{n}@example.org")).outcome is Outcome.SENT
        time.sleep(0.2)  # the server closes the idle connection meanwhile
    assert len(server.received) == 3 and server.connections == 3


def test_starttls_required_but_not_offered_fails_closed_without_credentials(server):
    sender = _sender(server, smtp_security="starttls", smtp_username="u", smtp_password="canary-password")
    result = sender.send(_out())
    assert result.outcome is Outcome.SENDER and result.connection_failed
    assert result.reply == "server does not offer STARTTLS (NEWSLETTER_SMTP_SECURITY=starttls)"
    assert server.received == [] and server.auth_attempts == []


@pytest.mark.slow
def test_a_tarpit_that_drips_continuation_lines_times_out(server):
    import time

    server.plan.rcpt["r@example.org"] = "tarpit"
    started = time.monotonic()
    result = _sender(server, smtp_timeout=1).send(_out())
    assert time.monotonic() - started < 3
    assert result.outcome is Outcome.TEMPORARY
    assert "reply not complete within 1 s" in result.reply


def test_a_failed_final_reply_resets_so_the_next_message_goes_on_the_same_connection(server):
    # Seen with aiosmtpd's stock Mailbox handler on a missing maildir: 500 after the final
    # ".", the envelope kept, and every following MAIL refused as nested (503): the edition paused.
    server.plan.data["crash@example.org"] = "crash"
    sender = _sender(server)
    first = sender.send(_out("crash@example.org"))
    second = sender.send(_out("r@example.org"))
    sender.close()
    assert (first.outcome, first.code) == (Outcome.TEMPORARY, 500)
    assert "maildir/tmp is missing" in first.reply
    assert (second.outcome, second.code) == (Outcome.SENT, 250)
    assert server.connections == 1 and [r.rcpt for r in server.received] == ["r@example.org"]


def test_a_capability_missing_on_a_reused_connection_is_checked_again_on_a_fresh_one(server):
    # The relay was reconfigured with SMTPUTF8 while a pooled connection kept its old EHLO.
    server.plan.smtputf8 = False
    sender = _sender(server)
    assert sender.send(_out()).outcome is Outcome.SENT
    server.plan.smtputf8 = True
    utf8 = Outgoing("digest@news.example", "jürgen@example.org", MSG, "<m2@news.example>", smtputf8=True)
    result = sender.send(utf8)
    assert (result.outcome, result.code) == (Outcome.SENT, 250)
    assert server.connections == 2 and [r.rcpt for r in server.received] == ["r@example.org", "jürgen@example.org"]
    # And a server that really has no SMTPUTF8 gets the permanent verdict, after the fresh EHLO.
    server.plan.smtputf8 = False
    sender.close()
    assert sender.send(_out()).outcome is Outcome.SENT
    refused = sender.send(utf8)
    sender.close()
    assert (refused.outcome, refused.reply) == (Outcome.REJECTED, "recipient needs SMTPUTF8, which the server does not offer")
    assert server.connections == 4
