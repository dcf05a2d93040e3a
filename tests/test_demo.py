"""`newsletter demo`: the README's first command (file outbox, SQLite, nothing running) and the
compose stack's (`docker compose run --rm worker newsletter demo`: SMTP to Mailpit, PostgreSQL)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from worker.cli.demo import is_reserved_address

SAMPLE_SENT = 25  # 26 sample subscribers, one with no stories in the demo week


def _newsletter() -> list[str]:
    script = Path(sys.executable).parent / "newsletter"
    return [str(script)] if script.exists() else [sys.executable, "-c", "from worker.cli import main; main()"]


@pytest.mark.slow
def test_default_demo_is_the_file_outbox_on_sqlite_with_nothing_set(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    first = subprocess.run([*_newsletter(), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "database: sqlite:///var/newsletter.db" in first.stdout
    assert "NEWSLETTER_SECRET_KEY is not set: using a demo-only key" in first.stdout
    assert f"outbox: {SAMPLE_SENT} .eml files in {tmp_path / 'var' / 'outbox'}" in first.stdout
    assert len(list((tmp_path / "var" / "outbox").glob("*.eml"))) == SAMPLE_SENT
    assert (tmp_path / "var" / "preview" / "digest.html").is_file()
    assert "smtp:" not in first.stdout
    again = subprocess.run([*_newsletter(), "demo"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (f"the demo already ran on this database: its sample week weekly-2025-W05 is done ({SAMPLE_SENT} sent), "
            f"so nothing was sent again. To see it afresh, delete {tmp_path / 'var' / 'newsletter.db'} (and "
            "var/outbox) and run `newsletter demo` again") in again.stdout
    assert "--force" not in again.stdout and "--retry-failed" not in again.stdout
    assert len(list((tmp_path / "var" / "outbox").glob("*.eml"))) == SAMPLE_SENT


def _smtp_env(smtp_server, **extra) -> dict[str, str]:
    env = {"NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
           "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SMTP_TIMEOUT": "5",
           "NEWSLETTER_SECRET_KEY": "compose-secret-Yh6Rt2Mw9Qz4Ld8Nc3Vb"}
    env.update(extra)
    return env


def _stories(db_url: str) -> int:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT count(*) FROM stories")).scalar_one()
    finally:
        engine.dispose()


def test_demo_over_smtp_sends_the_sample_week_through_the_relay(run_cli, smtp_server, db_url, tmp_path):
    """What compose runs: NEWSLETTER_EMAIL_BACKEND=smtp, a relay, a real secret key."""
    result = run_cli("demo", env=_smtp_env(smtp_server))
    assert result.code == 0, result.out + result.err
    assert len(smtp_server.received) == SAMPLE_SENT
    assert all(is_reserved_address(r.rcpt) for r in smtp_server.received)
    assert smtp_server.received[0].message["List-Unsubscribe"]
    assert (f"smtp: weekly-2025-W05: {SAMPLE_SENT} messages sent through 127.0.0.1:{smtp_server.port}; "
            "look in that relay's inbox (docker compose: Mailpit, http://localhost:8025)") in result.out
    assert "outbox:" not in result.out and not (tmp_path / "var" / "outbox").exists()
    assert "demo-only key" not in result.out
    # The password never reaches the terminal.
    url = sa.make_url(db_url)
    if url.password:
        assert url.password not in result.out

    again = run_cli("demo", env=_smtp_env(smtp_server))
    assert again.code == 0, again.out + again.err
    assert len(smtp_server.received) == SAMPLE_SENT
    assert f"smtp: nothing sent now (the demo week exists); weekly-2025-W05: {SAMPLE_SENT} messages" in again.out
    assert "the demo already ran on this database: its sample week weekly-2025-W05 is done" in again.out
    assert "--force" not in again.out


def test_demo_over_smtp_refuses_a_database_with_real_subscribers(run_cli, smtp_server, db_url):
    added = run_cli("subscribers", "add", "reader@news-site.co.uk", "--regions", "RU")
    assert added.code == 0, added.out + added.err
    result = run_cli("demo", env=_smtp_env(smtp_server))
    assert result.code == 2
    assert "1 outside the reserved example domains: refusing" in result.err
    assert smtp_server.received == [] and smtp_server.connections == 0
    assert _stories(db_url) == 0  # refused before importing anything


def test_demo_over_smtp_needs_a_real_secret_key(run_cli, smtp_server, tmp_path):
    env = _smtp_env(smtp_server)
    del env["NEWSLETTER_SECRET_KEY"]
    result = run_cli("demo", env=env)
    assert result.code == 2
    assert "NEWSLETTER_SECRET_KEY is required" in result.err
    assert "database:" not in result.out  # nothing done
    assert smtp_server.connections == 0


def test_demo_with_an_unreachable_relay_exits_1_and_leaves_the_rest_to_the_worker(run_cli, smtp_server):
    port = smtp_server.port
    smtp_server.stop()
    result = run_cli("demo", env=_smtp_env(smtp_server, NEWSLETTER_SMTP_PORT=str(port)))
    assert result.code == 1, result.out + result.err
    assert f"0 messages sent through 127.0.0.1:{port}" in result.out
    assert "not yet (a running worker's reconciler retries them)" in result.out


def test_a_backend_that_is_not_one_is_a_configuration_error(run_cli):
    # "memory" is the tests' in-process double (MemorySender), not a backend to choose.
    result = run_cli("demo", env={"NEWSLETTER_EMAIL_BACKEND": "memory"})
    assert result.code == 2
    assert "NEWSLETTER_EMAIL_BACKEND" in result.err


@pytest.mark.parametrize("address, reserved", [
    ("anna.petrova@example.org", True), ("x@example.com", True), ("x@example.net", True),
    ("x@bücher.example", True), ("x@xn--bcher-kva.example", True), ("x@mail.example.com", True),
    ("x@host.test", True), ("x@a.invalid", True), ("x@localhost", True),
    ("x@gmail.com", False), ("x@example.co.uk", False), ("x@notexample.com", False), ("x@example.org.evil", False),
])
def test_reserved_addresses(address, reserved):
    assert is_reserved_address(address) is reserved
