"""The whole way round with a real relay: the project sends an edition through a private
Postfix instance with the VERP bounce address; Postfix relays to an SMTP server that
refuses one reader at RCPT (550 5.1.1), writes the DSN itself and delivers it to the
bounce domain's Maildir; `newsletter bounces process --maildir` then marks that
delivery and that reader bounced."""

from __future__ import annotations

import email
import time
from email.policy import default

import pytest
import sqlalchemy as sa

from tests.bounce_support import BOUNCE_ADDRESS, bounce_events, events, subscriber
from tests.conftest import IN_CI
from tests.support import postfix
from tests.support.data import add_subscribers, delivery_rows, load_stories
from worker.bounces.verp import ReturnPath

pytestmark = pytest.mark.slow
SECRET = "postfix-secret-Gz5Kw1Qm8Tn3Rb7Xv2Lc"
GONE = "reader1@example.org"


@pytest.fixture
def relay(smtp_server):
    why = postfix.missing()
    if why:
        if IN_CI:
            pytest.fail(f"{why}: the Postfix test must run in CI")
        pytest.skip(why)
    instance = postfix.PrivatePostfix(relay_port=smtp_server.port, bounce_domain=BOUNCE_ADDRESS.partition("@")[2])
    try:
        yield instance.start()
    finally:
        instance.stop()


def test_a_refusal_behind_postfix_comes_back_as_a_dsn_and_bounces_the_reader(engine, run_cli, tmp_path,
                                                                               smtp_server, relay):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 3)
    smtp_server.plan.rcpt[GONE] = "550 5.1.1 <reader1@example.org>: Recipient address rejected: no such user"
    env = {"NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
           "NEWSLETTER_SMTP_PORT": str(relay.port), "NEWSLETTER_SMTP_TIMEOUT": "10",
           "NEWSLETTER_SECRET_KEY": SECRET, "NEWSLETTER_FROM": "Melange News <digest@news.example>",
           "NEWSLETTER_BOUNCE_ADDRESS": BOUNCE_ADDRESS, "NEWSLETTER_BROKER_URL": "redis://127.0.0.1:1/0",
           "NEWSLETTER_SMTP_SINK": "true"}
    sent = run_cli("send", "--week", "2025-W05", "--inline", env=env)
    assert sent.code == 0, sent.out + sent.err
    rows = delivery_rows(engine, "weekly-2025-W05")
    # Postfix took all three: for the ledger they are sent.
    assert {e: d.state for e, d in rows.items()} == {f"reader{n}@example.org": "sent" for n in range(3)}

    # The relayed copies carry the delivery's VERP address as envelope sender, and the
    # newsletter's own address as From.
    return_path = ReturnPath.parse(BOUNCE_ADDRESS, SECRET)
    relay.wait_for_mail(1)
    deadline = time.monotonic() + 60
    while len(smtp_server.received) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    got = {r.rcpt: r for r in smtp_server.received}
    assert set(got) == {"reader0@example.org", "reader2@example.org"}
    for address, received in got.items():
        assert return_path.delivery_of(received.mail_from) == rows[address].id
        assert received.message["From"] == "Melange News <digest@news.example>"

    # Postfix's own DSN, in the bounce domain's Maildir, addressed to the tagged sender.
    (dsn_file,) = relay.wait_for_mail(1)
    report = email.message_from_bytes(dsn_file.read_bytes(), policy=default)
    assert report.get_content_type() == "multipart/report"
    assert return_path.delivery_of(report["To"]) == rows[GONE].id

    result = run_cli("bounces", "process", "--maildir", str(relay.maildir), env=env)
    assert result.code == 0, result.out + result.err
    assert result.out.startswith("1 messages read; applied: 1 permanent")
    row = delivery_rows(engine, "weekly-2025-W05")[GONE]
    assert (row.state, row.last_code) == ("bounced", 550)
    assert "5.1.1" in row.last_reply
    assert subscriber(engine, GONE).status == "bounced"
    assert events(engine, GONE)[-1] == ("bounced", "bounce", "late bounce 5.1.1 userunknown (dsn)")
    (event,) = bounce_events(engine)
    assert (event.kind, event.code, event.delivery_id) == ("permanent", "5.1.1", rows[GONE].id)
    assert subscriber(engine, "reader0@example.org").status == "active"
    # Read once: the message is flagged seen, and a second run reads nothing.
    assert [p.name.endswith(":2,S") for p in (relay.maildir / "cur").iterdir()] == [True]
    assert run_cli("bounces", "process", "--maildir", str(relay.maildir), env=env).out.startswith("0 messages")
    with engine.connect() as conn:
        assert conn.scalar(sa.text("SELECT count(*) FROM bounce_events")) == 1
