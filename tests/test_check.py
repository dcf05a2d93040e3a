"""`newsletter check`, and the gate it shares with the worker and `send` (worker/readiness.py):
nothing sample, no guessable key and no unreachable relay behind real mail."""

from __future__ import annotations

import os
import socket

import pytest

from worker.readiness import secret_key_problem
from worker.settings import load_settings

STRONG = "Jq3vX9tLm2Rw8Zp5Kd1Ny7Hc4Bf6Gs0T"
READY = {
    "NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1", "NEWSLETTER_SMTP_TIMEOUT": "2",
    "NEWSLETTER_SECRET_KEY": STRONG, "NEWSLETTER_FROM": "The Weekly Planet <digest@weekly-planet.eu>",
    "NEWSLETTER_PUBLIC_URL": "https://news.weekly-planet.eu", "NEWSLETTER_NEWSLETTER_NAME": "The Weekly Planet",
    "NEWSLETTER_POSTAL_ADDRESS": "Weekly Planet GmbH, Torstraße 1, 10119 Berlin, Germany",
}


@pytest.fixture
def check(capsys, monkeypatch):
    """`newsletter check` in-process with only the given settings (conftest's _isolated: an
    empty directory, no other NEWSLETTER_* variable), and no database."""
    from worker.cli import main

    def run(env: dict[str, str]) -> tuple[int, str]:
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        try:
            main(["check"])
            code = 0
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return run


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


def test_the_sample_configuration_is_not_ready_and_each_error_names_its_setting(check):
    port = _closed_port()
    code, out = check({"NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
                       "NEWSLETTER_SMTP_PORT": str(port), "NEWSLETTER_SECRET_KEY": "change-me"})
    assert code == 1
    errors = [line.split(":", 2)[1].strip() for line in out.splitlines() if line.startswith("error:")]
    assert errors == ["NEWSLETTER_NEWSLETTER_NAME", "NEWSLETTER_POSTAL_ADDRESS", "NEWSLETTER_FROM",
                      "NEWSLETTER_PUBLIC_URL", "NEWSLETTER_SECRET_KEY", "NEWSLETTER_SMTP_HOST"]
    assert "error: NEWSLETTER_FROM: digest@localhost is at localhost" in out
    assert "error: NEWSLETTER_SECRET_KEY: is a placeholder anyone can read in the docs" in out
    # The refused connection says where it went.
    assert f"error: NEWSLETTER_SMTP_HOST: the relay does not work: connection failed to 127.0.0.1:{port}: " \
           "ConnectionRefusedError" in out
    assert out.splitlines()[-1] == "not ready for real mail: 6 errors, 3 warnings"


def test_a_real_configuration_is_ready_and_only_warned_about_what_it_goes_without(check, smtp_server):
    code, out = check({**READY, "NEWSLETTER_SMTP_PORT": str(smtp_server.port)})
    assert (code, out) == (0, (
        "warning: NEWSLETTER_DKIM_SELECTOR: not set: mail goes out without a DKIM signature, and large mailbox "
        "providers file unsigned bulk mail as spam (docs/email.md)\n"
        "warning: NEWSLETTER_BOUNCE_ADDRESS: not set: bounces go to the From address and are not matched to "
        "readers (docs/bounces.md)\n"
        "warning: NEWSLETTER_REGIONS: not set: sign-up offers the regions with stories in the last 8 weeks "
        "(docs/readers.md)\n"
        "ready for real mail (3 warnings)\n"))
    assert smtp_server.received == []  # connected and hung up: nothing sent


@pytest.mark.parametrize("address", ["digest@example.com", "digest@news.example.org", "digest@news.example",
                                     "digest@weekly.test", "digest@x.invalid", "digest@example.net"])
def test_a_from_at_a_reserved_example_domain_is_a_warning(check, smtp_server, address):
    code, out = check({**READY, "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_FROM": f"News <{address}>",
                       "NEWSLETTER_REGIONS": "RU UA"})
    assert code == 0
    assert f"warning: NEWSLETTER_FROM: {address} is at a reserved example domain" in out


@pytest.mark.parametrize("url", ["http://news.weekly-planet.eu", "https://127.0.0.1:8000", "https://localhost",
                                 "https://[::1]:8000", "https://app.localhost"])
def test_a_loopback_or_clear_text_public_url_is_an_error(check, smtp_server, url):
    code, out = check({**READY, "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_PUBLIC_URL": url})
    assert code == 1
    assert [line for line in out.splitlines() if line.startswith("error:")][0].startswith(
        f"error: NEWSLETTER_PUBLIC_URL: {url}")


def test_a_relay_that_does_not_offer_starttls_is_an_error(check, smtp_server):
    code, out = check({**READY, "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SMTP_SECURITY": "starttls"})
    assert code == 1
    assert ("error: NEWSLETTER_SMTP_SECURITY: the relay does not work: server does not offer STARTTLS "
            "(NEWSLETTER_SMTP_SECURITY=starttls)") in out


def test_the_file_backend_is_not_ready_for_real_mail(check):
    code, out = check({**READY, "NEWSLETTER_EMAIL_BACKEND": "file"})
    assert code == 1
    assert "error: NEWSLETTER_EMAIL_BACKEND: is file: mail is written to var/outbox, nobody receives it" in out


def test_half_a_dkim_configuration_is_an_error(check, smtp_server):
    code, out = check({**READY, "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_DKIM_SELECTOR": "s1",
                       "NEWSLETTER_DKIM_DOMAIN": "weekly-planet.eu"})
    assert code == 1
    assert "error: NEWSLETTER_DKIM_KEY_FILE: not set, while the other DKIM settings are: nothing is signed" in out


@pytest.mark.parametrize("key", ["x", "k", "secret", "change-me", "changeme", "CHANGE-ME",
                                 "change-me-to-a-long-random-string", "change-me-0123456789abcdefghijklmnop",
                                 "pick-one", "demo-only-not-secret", "cli-secret", "a" * 64,
                                 "abababababababababababababababab", "a-31-byte-key-that-is-too-short"])
def test_a_placeholder_or_short_key_is_weak(key):
    assert secret_key_problem(load_settings({"NEWSLETTER_SECRET_KEY": key, "NEWSLETTER_CONFIG": os.devnull}))


def test_a_generated_key_is_not_weak():
    import secrets

    for _ in range(20):
        assert secret_key_problem(load_settings({"NEWSLETTER_SECRET_KEY": secrets.token_urlsafe(32),
                                                 "NEWSLETTER_CONFIG": os.devnull})) is None


# The gate: `send` and the demo.


def test_send_over_smtp_refuses_a_sample_configuration_and_sends_nothing(cli, smtp_server):
    result = cli("send", "--week", "2025-W05", "--inline", "--yes", NEWSLETTER_SMTP_SINK="false")
    assert result.code == 2 and result.out == ""
    assert result.err == (
        "error: not ready for real mail (NEWSLETTER_EMAIL_BACKEND=smtp): NEWSLETTER_NEWSLETTER_NAME: is the sample "
        "'Melange News Weekly': set your newsletter's name; NEWSLETTER_POSTAL_ADDRESS: is the sample address: every "
        "newsletter must carry your real postal address (CAN-SPAM and similar laws); NEWSLETTER_PUBLIC_URL: "
        "http://127.0.0.1:8000 is not https://: readers' unsubscribe and manage links would travel in clear text "
        "(`newsletter check` explains each)\n")
    assert smtp_server.received == []
    assert cli("status").out == "no editions yet\n"  # nothing planned either


def test_send_over_smtp_goes_out_once_the_configuration_is_ready(cli, smtp_server):
    ready = {k: v for k, v in READY.items() if k not in ("NEWSLETTER_SMTP_HOST", "NEWSLETTER_SMTP_TIMEOUT")}
    result = cli("send", "--week", "2025-W05", "--inline", "--yes", NEWSLETTER_SMTP_SINK="false", **ready)
    assert result.code == 0, result.err
    assert len(smtp_server.received) == 14  # two of the 16 follow regions without stories


def test_a_sink_relay_takes_sample_settings_but_never_a_weak_key(cli, smtp_server):
    refused = cli("send", "--week", "2025-W05", "--inline", "--yes", NEWSLETTER_SECRET_KEY="cli-secret")
    assert refused.code == 2
    assert refused.err.startswith("error: not ready for real mail (NEWSLETTER_EMAIL_BACKEND=smtp): "
                                  "NEWSLETTER_SECRET_KEY: is too weak (at least 32 random bytes)")
    assert smtp_server.received == []
    assert cli("send", "--week", "2025-W05", "--inline", "--yes").code == 0
    assert len(smtp_server.received) == 14  # two of the 16 follow regions without stories


def test_the_file_backend_sends_with_sample_settings_and_any_key(cli, tmp_path):
    outbox = tmp_path / "outbox"
    result = cli("send", "--week", "2025-W05", "--inline", "--yes", NEWSLETTER_EMAIL_BACKEND="file",
                 NEWSLETTER_OUTBOX_DIR=str(outbox), NEWSLETTER_SECRET_KEY="x", NEWSLETTER_SMTP_SINK="false",
                 NEWSLETTER_FROM="News <digest@localhost>")
    assert result.code == 0, result.err
    assert len(list(outbox.glob("*.eml"))) == 14


def test_the_demo_over_smtp_refuses_a_placeholder_key(run_cli, smtp_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run_cli("demo", env={"NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
                                  "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SECRET_KEY": "change-me"})
    assert result.code == 2 and result.out == ""
    assert result.err.startswith("error: setting NEWSLETTER_SECRET_KEY is a placeholder anyone can read in the docs")
    assert smtp_server.received == []


def test_serve_over_smtp_refuses_a_weak_key_before_it_listens(db_url, tmp_path):
    """Sign-up mails real people links signed with the key (issue 21: `change-me`)."""
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({"NEWSLETTER_DATABASE_URL": db_url, "NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_SINK": "true",
                "NEWSLETTER_SECRET_KEY": "change-me"})
    run = subprocess.run([str(Path(sys.executable).parent / "newsletter"), "serve", "--port", "1"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.startswith("error: not ready for real mail (NEWSLETTER_EMAIL_BACKEND=smtp): "
                                 "NEWSLETTER_SECRET_KEY: is a placeholder")
