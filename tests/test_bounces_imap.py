"""The bounce mailbox over IMAP, against a real Dovecot (a private instance): each message
read once, flagged seen; one that cannot be read kept and flagged for a human."""

from __future__ import annotations

import ssl

import pytest
from imapclient import IMAPClient

from tests.bounce_support import BOUNCE_ADDRESS, NOW, RETURN_PATH, arf, dsn, sent_editions, subscriber
from tests.conftest import IN_CI
from tests.support import dovecot
from worker.bounces.mailboxes import ImapLocation, process_imap
from worker.bounces.reports import MAX_REPORT_BYTES
from worker.errors import ConfigError

pytestmark = pytest.mark.slow
A, B = "alice@example.net", "bob@example.net"


@pytest.fixture
def imap():
    why = dovecot.missing()
    if why:
        if IN_CI:
            pytest.fail(f"{why}: the IMAP test must run in CI")
        pytest.skip(why)
    server = dovecot.PrivateDovecot()
    try:
        yield server.start()
    finally:
        server.stop()


def _flags(server, context) -> dict[str, list[int]]:
    with IMAPClient("127.0.0.1", port=server.port, ssl=True, ssl_context=context, timeout=10) as client:
        client.login(dovecot.USER, dovecot.PASSWORD)
        client.select_folder("INBOX", readonly=True)
        return {"seen": client.search(["SEEN"]), "flagged": client.search(["FLAGGED"]),
                "all": client.search(["ALL"])}


def test_the_imap_mailbox_is_read_once_and_a_bad_message_kept(engine, settings, imap, run_cli, monkeypatch):
    ids = sent_editions(engine, [A, B])
    imap.add("1.dsn", dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])))
    imap.add("2.arf", arf(None, mail_from=RETURN_PATH.for_delivery(ids[(1, B)])))
    imap.add("3.big", b"Subject: big\r\n\r\n" + b"x" * (MAX_REPORT_BYTES + 1))
    imap.add("4.reply", b"Subject: Out of office\r\nAuto-Submitted: auto-replied\r\n\r\naway\r\n")
    context = ssl.create_default_context(cafile=str(imap.certs["ca"].cert))
    settings = settings.model_copy(update={"bounce_address": BOUNCE_ADDRESS})
    # A dry run reads everything and flags nothing.
    dry = process_imap(engine, settings, ImapLocation.parse(imap.url()), now=NOW, ssl_context=context, dry_run=True)
    assert [line["kind"] for line in dry.readings] == ["permanent", "complaint", None, None]
    assert _flags(imap, context)["seen"] == [] and _flags(imap, context)["flagged"] == []
    assert subscriber(engine, A).status == "active"
    summary = process_imap(engine, settings, ImapLocation.parse(imap.url()), now=NOW, ssl_context=context)
    assert summary.messages == 4 and dict(summary.applied) == {"permanent": 1, "complaint": 1}
    assert len(summary.kept) == 1 and summary.kept[0].endswith(f"bytes, over the {MAX_REPORT_BYTES} read")
    assert subscriber(engine, A).status == "bounced" and subscriber(engine, B).status == "complained"
    flags = _flags(imap, context)
    assert len(flags["all"]) == 4 and len(flags["seen"]) == 3 and len(flags["flagged"]) == 1
    assert not set(flags["seen"]) & set(flags["flagged"])  # the big one is kept unseen, for a human
    # The CLI reads the configured mailbox (trusting the test CA the standard way): nothing new.
    monkeypatch.setenv("SSL_CERT_FILE", str(imap.certs["ca"].cert))
    result = run_cli("bounces", "process", env={"NEWSLETTER_SECRET_KEY": "test-secret-key",
                                                "NEWSLETTER_BOUNCE_ADDRESS": BOUNCE_ADDRESS,
                                                "NEWSLETTER_BOUNCE_MAILBOX": imap.url()})
    assert result.code == 0 and result.out.startswith("0 messages read"), result.out + result.err


def test_a_refused_login_names_the_mailbox_not_the_password(engine, settings, imap):
    context = ssl.create_default_context(cafile=str(imap.certs["ca"].cert))
    wrong = imap.url().replace(dovecot.PASSWORD, "wrong-password-123")
    with pytest.raises(ConfigError) as err:
        process_imap(engine, settings, ImapLocation.parse(wrong), now=NOW, ssl_context=context)
    assert f"bounce mailbox {dovecot.USER} at 127.0.0.1:{imap.port}" in str(err.value)
    assert "wrong-password-123" not in str(err.value)


def test_the_mailbox_certificate_is_verified(engine, settings, imap):
    with pytest.raises(ConfigError, match="SSLCertVerificationError|CERTIFICATE_VERIFY_FAILED"):
        process_imap(engine, settings, ImapLocation.parse(imap.url()), now=NOW, ssl_context=None)


def test_the_beat_task_reads_the_mailbox_in_a_real_worker(engine, imap, start_worker, worker_env):
    """worker.tasks.process_bounces, as beat sends it, run by a real `celery worker`."""
    from tests.support.worker import wait_for
    from worker.celery_app import create_app
    from worker.settings import load_settings

    ids = sent_editions(engine, [A])
    imap.add("1.dsn", dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])))
    env = {"NEWSLETTER_SECRET_KEY": "test-secret-key", "NEWSLETTER_BOUNCE_ADDRESS": BOUNCE_ADDRESS,
           "NEWSLETTER_BOUNCE_MAILBOX": imap.url(), "SSL_CERT_FILE": str(imap.certs["ca"].cert),
           # This worker only reads bounces; the suite's short key (its VERP tags) is refused over SMTP.
           "NEWSLETTER_EMAIL_BACKEND": "file"}
    worker = start_worker(concurrency=1, **env)
    app = create_app(load_settings({**worker_env, **{k: v for k, v in env.items() if k.startswith("NEWSLETTER_")}}))
    assert "bounces" in app.conf.beat_schedule
    app.send_task(app.conf.beat_schedule["bounces"]["task"])
    wait_for(lambda: subscriber(engine, A).status == "bounced", timeout=60, what="the bounce applied")
    wait_for(lambda: "bounces: 1 messages read; applied: 1 permanent" in worker.output(), timeout=30,
             what="the task's log line")
    assert "imap-test-password" not in worker.output()
