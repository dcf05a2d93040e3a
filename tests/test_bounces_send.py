"""The send side of bounces: the envelope sender per delivery, and the settings."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from tests.support.data import add_subscribers, delivery_rows, load_stories
from worker.bounces.mailboxes import ImapLocation
from worker.bounces.verp import ReturnPath
from worker.celery_app import create_app
from worker.errors import ConfigError
from worker.settings import Settings, load_settings

NO_BROKER = "redis://127.0.0.1:1/0"


def _send(run_cli, engine, tmp_path, smtp_server, **extra):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 4)
    env = {"NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
           "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SMTP_TIMEOUT": "2",
           "NEWSLETTER_SECRET_KEY": "verp-secret-Hq2Wm8Zt4Lc9Xv3Bn7Kd5Pr", "NEWSLETTER_FROM": "News <digest@news.example>",
           "NEWSLETTER_BROKER_URL": NO_BROKER, "NEWSLETTER_SMTP_SINK": "true", **extra}
    assert run_cli("send", "--week", "2025-W05", "--inline", env=env).code == 0
    return delivery_rows(engine, "weekly-2025-W05")


def test_each_message_carries_its_deliverys_return_path(run_cli, engine, tmp_path, smtp_server):
    rows = _send(run_cli, engine, tmp_path, smtp_server, NEWSLETTER_BOUNCE_ADDRESS="bounces@bounce.example.org")
    return_path = ReturnPath.parse("bounces@bounce.example.org", "verp-secret-Hq2Wm8Zt4Lc9Xv3Bn7Kd5Pr")
    assert len(smtp_server.received) == 4
    senders = set()
    for received in smtp_server.received:
        assert received.mail_from.startswith("bounces+") and received.mail_from.endswith("@bounce.example.org")
        assert return_path.delivery_of(received.mail_from) == rows[received.rcpt].id
        # The From header (and the Message-ID the DSN may quote) stay the newsletter's.
        assert received.message["From"] == "News <digest@news.example>"
        assert received.message["Message-ID"] == rows[received.rcpt].message_id
        senders.add(received.mail_from)
    assert len(senders) == 4


def test_without_a_bounce_address_the_envelope_sender_is_the_from_address(run_cli, engine, tmp_path, smtp_server):
    _send(run_cli, engine, tmp_path, smtp_server)
    assert {r.mail_from for r in smtp_server.received} == {"digest@news.example"}


@pytest.mark.parametrize("value", ["bounces+x@bounce.example.org", "not an address", "a@b", "bounces@ex ample.org",
                                   "bounces@bounce.example.org\r\nBcc: x@y.org"])
def test_a_bounce_address_must_be_plain(value):
    with pytest.raises(ConfigError, match="NEWSLETTER_BOUNCE_ADDRESS"):
        load_settings({"NEWSLETTER_BOUNCE_ADDRESS": value})


def test_the_mailbox_url_is_a_secret_and_never_echoed(tmp_path):
    config = tmp_path / "n.toml"
    config.write_text('bounce_mailbox = "imaps://u:p@h/INBOX"\n')
    with pytest.raises(ConfigError, match="is a secret"):
        load_settings({"NEWSLETTER_CONFIG": str(config)})
    with pytest.raises(ConfigError) as err:
        ImapLocation.parse("imap://user:hunter2@mail.example.org/INBOX")
    assert "hunter2" not in str(err.value)
    where = ImapLocation.parse("imaps://bounce%40example.org:p%2Fw@mail.example.org:1993/Bounces")
    assert (where.host, where.port, where.username, where.password, where.folder) == (
        "mail.example.org", 1993, "bounce@example.org", "p/w", "Bounces")
    assert ImapLocation.parse("imaps://u:p@mail.example.org").folder == "INBOX"


def test_beat_reads_the_mailbox_only_when_one_is_set():
    assert "bounces" not in create_app(Settings()).conf.beat_schedule
    schedule = create_app(Settings(bounce_mailbox=SecretStr("imaps://u:p@h/INBOX"))).conf.beat_schedule
    assert schedule["bounces"] == {"task": "worker.tasks.process_bounces", "schedule": 300.0}


def test_the_ses_topic_must_be_an_sns_arn():
    assert load_settings({"NEWSLETTER_SES_TOPIC_ARN": "arn:aws:sns:eu-west-1:123456789012:bounces"}).ses_topic_arn
    with pytest.raises(ConfigError, match="NEWSLETTER_SES_TOPIC_ARN"):
        load_settings({"NEWSLETTER_SES_TOPIC_ARN": "arn:aws:sqs:eu-west-1:123456789012:bounces"})
