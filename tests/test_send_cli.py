"""`newsletter send`, `status`, `pause`, `resume` as an operator uses them."""

import json
from datetime import UTC, datetime

import pytest

from tests.support.data import add_subscribers, ledger, load_stories
from worker.delivery.plan import plan_edition
from worker.digest import week_window

KEY = "weekly-2025-W05"


@pytest.fixture
def cli(cli):
    """The shared `cli`, with retries due at once."""
    return lambda *args, **extra: cli(*args, NEWSLETTER_RETRY_BASE_SECONDS="0.001", **extra)


def test_inline_send_then_status(cli, smtp_server, engine):
    result = cli("send", "--week", "2025-W05", "--inline")
    assert result.code == 0, result.err
    assert f"{KEY}: planned 16 deliveries" in result.out
    assert len(smtp_server.received) == 14
    status = json.loads(cli("status", KEY, "--json").out)
    assert status["state"] == "done"
    assert status["counts"] == {"pending": 0, "sending": 0, "sent": 14, "failed": 0, "bounced": 0,
                                "skipped": 2, "unknown": 0}
    assert status["skip_reasons"] == {"no-stories": 2}
    assert status["smtp_codes"] == {"sent 250": 14}
    again = cli("send", "--week", "2025-W05", "--inline")
    assert again.code == 0 and "already exists: done" in again.out
    assert len(smtp_server.received) == 14


def test_dry_run_counts_and_records_nothing(cli, smtp_server, engine):
    result = cli("send", "--week", "2025-W05", "--dry-run")
    assert result.code == 0, result.err
    assert "would send 14, skip 2 (no-stories), 8 region sets" in result.out
    assert "JP" in result.out and "skipped: no-stories" in result.out
    assert smtp_server.received == [] and ledger(engine, KEY) == {}
    assert cli("status").out.strip() == "no editions yet"


def test_test_send_touches_no_ledger(cli, smtp_server, engine):
    result = cli("send", "--week", "2025-W05", "--to", "editor@news.example", "--to", "boss@news.example",
                 "--regions", "RU,UA")
    assert result.code == 0, result.err
    assert sorted(r.rcpt for r in smtp_server.received) == ["boss@news.example", "editor@news.example"]
    assert all(r.message["Subject"].startswith("[TEST] ") for r in smtp_server.received)
    assert ledger(engine, KEY) == {}
    bad = cli("send", "--to", "not-an-address")
    assert bad.code == 2 and bad.err.startswith("error: --to: invalid email address")


def test_retry_failed_requeues_only_failed_rows(cli, smtp_server, engine):
    smtp_server.plan.rcpt["reader0@example.org"] = "451 4.3.0 busy"
    assert cli("send", "--week", "2025-W05", "--inline", NEWSLETTER_MAX_ATTEMPTS="1").code == 1
    assert ledger(engine, KEY)["reader0@example.org"] == ("failed", None)
    del smtp_server.plan.rcpt["reader0@example.org"]
    result = cli("send", "--week", "2025-W05", "--retry-failed", "--inline")
    assert result.code == 0, result.err
    assert f"{KEY}: 1 failed rows re-queued" in result.out
    assert smtp_server.by_recipient()["reader0@example.org"] == 1
    assert len(smtp_server.received) == 14


def test_force_sends_again_under_a_new_audited_key(cli, smtp_server, engine):
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    result = cli("send", "--week", "2025-W05", "--force", "--inline")
    assert result.code == 0, result.err
    assert f"{KEY}-force-2: planned (forced re-send of {KEY} by " in result.out
    assert len(smtp_server.received) == 28
    status = json.loads(cli("status", f"{KEY}-force-2", "--json").out)
    assert status["note"].startswith(f"forced re-send of {KEY}")


def test_pause_and_resume(cli, smtp_server, engine):
    smtp_server.plan.data_all = "554 5.7.1 spam"
    result = cli("send", "--week", "2025-W05", "--inline")
    assert result.code == 1
    assert "paused: sender refused: 554 5.7.1 spam" in result.err
    assert cli("pause", KEY).code == 2  # already paused
    smtp_server.plan.data_all = None
    resumed = cli("resume", KEY, "--inline")
    assert resumed.code == 0, resumed.err
    assert len(smtp_server.received) == 14 and max(smtp_server.by_recipient().values()) == 1
    assert cli("resume", KEY).code == 2


def test_manual_window_and_usage_errors(cli, smtp_server):
    result = cli("send", "--since", "2025-01-27", "--until", "2025-02-03", "--inline")
    assert result.code == 0, result.err
    assert "manual-2025-01-27..2025-02-03: planned 16 deliveries" in result.out
    assert cli("send", "--since", "2025-01-27").err == "error: --since and --until go together\n"
    assert cli("send", "--week", "2025-W05", "--since", "2025-01-27", "--until", "2025-02-03").code == 2
    assert cli("send", "--since", "2025-02-03", "--until", "2025-01-27").err == (
        "error: --until (2025-01-27) must be after --since (2025-02-03)\n")
    assert cli("status", "weekly-1999-W01").err == "error: no edition 'weekly-1999-W01' (see `newsletter status`)\n"


def test_sending_needs_a_secret_key(cli):
    result = cli("send", "--week", "2025-W05", "--inline", NEWSLETTER_SECRET_KEY="")
    assert result.code == 2
    assert result.err.startswith("error: setting NEWSLETTER_SECRET_KEY is required")


def test_an_unreachable_broker_is_one_line_and_leaves_rows_pending(cli, engine):
    result = cli("send", "--week", "2025-W05", NEWSLETTER_BROKER_URL="redis://127.0.0.1:1/0")
    assert result.code == 2
    assert result.err.startswith("error: cannot reach the broker at redis://127.0.0.1:1/0")
    assert {s for s, _ in ledger(engine, KEY).values()} == {"pending", "skipped"}


# --- manual sends show what the guard sees and ask ---------------------------------------------


@pytest.fixture
def terminal(engine, db_url, smtp_server, tmp_path, monkeypatch):
    """`newsletter send` as typed at a terminal: click's CliRunner feeds the answer; only
    the one question "is stdin a terminal?" is answered yes (the pty test below asks a real one)."""
    from click.testing import CliRunner

    from worker.cli import Context
    from worker.cli import cli as group
    from worker.cli import send as send_module

    monkeypatch.setattr(send_module, "_interactive", lambda: True)
    env = {"NEWSLETTER_DATABASE_URL": db_url, "NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
           "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SMTP_TIMEOUT": "2",
           "NEWSLETTER_SECRET_KEY": "cli-secret-kN3q8zR5vT1wY7pL2mD6sH9f", "NEWSLETTER_FROM": "News <digest@news.example>",
           "NEWSLETTER_BROKER_URL": "redis://127.0.0.1:1/0", "NEWSLETTER_SMTP_SINK": "true"}

    def run(*args, answer=None):
        context = Context()
        try:
            return CliRunner().invoke(group, list(args), input=answer, env=env, obj=context)
        finally:
            for name in ("engine", "raw_engine"):  # its pool's connections, now rather than at GC
                if name in context.__dict__:
                    context.__dict__[name].dispose()

    return run


def _quiet_week(engine, tmp_path):
    """Stories only on the week's Monday: 6.6 days without a new one when it ends (held)."""
    load_stories(engine, tmp_path, week_days=("2025-01-27",))
    add_subscribers(engine, 16)


def test_at_a_terminal_send_shows_the_guard_and_no_sends_nothing(terminal, engine, smtp_server, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    refused = terminal("send", "--week", "2025-W05", "--inline", answer="n\n")
    assert refused.exit_code == 1
    assert "the guard's view of 2025-W05 (what a scheduled send would check):" in refused.stderr
    assert "  RU: 2 stories (usual 0, median of the last 4 weeks)" in refused.stderr
    assert "  newest story: 2025-01-30 10:00 UTC, 3.6 days before the window ended" in refused.stderr
    assert "  nothing to hold" in refused.stderr
    assert "Send to 14 subscribers? [y/N]: n\nnot sent: you answered no; nothing was planned\n" in refused.stderr
    assert ledger(engine, KEY) == {} and smtp_server.received == []

    sent = terminal("send", "--week", "2025-W05", "--inline", answer="y\n")
    assert sent.exit_code == 0, sent.output
    assert f"{KEY}: planned 16 deliveries" in sent.stdout and len(smtp_server.received) == 14


def test_at_a_terminal_yes_skips_the_question(terminal, engine, smtp_server, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    sent = terminal("send", "--week", "2025-W05", "--inline", "--yes")  # no input at all
    assert sent.exit_code == 0, sent.output
    assert "the guard's view of 2025-W05" in sent.stderr and "Send to" not in sent.output
    assert len(smtp_server.received) == 14


def test_at_a_terminal_a_week_the_guard_would_hold_is_said_and_may_be_sent(terminal, engine, smtp_server, tmp_path):
    _quiet_week(engine, tmp_path)
    sent = terminal("send", "--week", "2025-W05", "--inline", answer="y\n")
    assert sent.exit_code == 0, sent.output
    assert "  would hold: no new story for 6.6 days before the week ended" in sent.stderr
    assert "warning: a scheduled send of this week would be held" in sent.stderr
    assert len(smtp_server.received) == 14


def test_without_a_terminal_a_week_the_guard_would_hold_is_refused_unless_yes(run_cli, engine, smtp_server,
                                                                              tmp_path):
    _quiet_week(engine, tmp_path)
    env = {"NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
           "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SECRET_KEY": "cli-secret-kN3q8zR5vT1wY7pL2mD6sH9f",
           "NEWSLETTER_SMTP_SINK": "true"}

    def cli(*args):
        return run_cli(*args, env=env)

    refused = cli("send", "--week", "2025-W05", "--inline")
    assert refused.code == 1 and refused.out == ""
    assert "error: not sent: the guard would hold 2025-W05 (no new story for 6.6 days" in refused.err
    assert "--yes to send it anyway" in refused.err
    assert ledger(engine, KEY) == {} and smtp_server.received == [] and cli("status").out == "no editions yet\n"

    sent = cli("send", "--week", "2025-W05", "--inline", "--yes")
    assert sent.code == 0, sent.err
    assert "warning: sending 2025-W05 although the guard would hold it (--yes)" in sent.err
    assert len(smtp_server.received) == 14


def test_without_a_terminal_a_normal_week_is_sent_as_before_without_a_word_more(cli, engine, smtp_server):
    result = cli("send", "--week", "2025-W05", "--inline")
    assert result.code == 0 and result.err == ""
    assert len(smtp_server.received) == 14


def test_at_a_terminal_approve_and_retry_ask_first(terminal, engine, smtp_server, tmp_path, settings):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz),
                 now=datetime(2025, 2, 3, 7, tzinfo=UTC),
                 hold="review mode (NEWSLETTER_REVIEW=true): every scheduled edition waits for approval")
    kept = terminal("send", "--week", "2025-W05", "--approve", "--inline", answer="n\n")
    assert kept.exit_code == 1
    assert f"{KEY} is held: review mode" in kept.stderr and "Send to 14 subscribers? [y/N]" in kept.stderr
    assert f"not sent: you answered no; {KEY} stays held\n" in kept.stderr
    assert {s for s, _ in ledger(engine, KEY).values()} == {"pending", "skipped"} and smtp_server.received == []

    smtp_server.plan.rcpt["reader0@example.org"] = "451 4.3.0 busy"
    approved = terminal("send", "--week", "2025-W05", "--approve", "--inline", answer="y\n")
    assert approved.exit_code == 1  # one row failed (busy), the rest sent
    assert len(smtp_server.received) == 13 and ledger(engine, KEY)["reader0@example.org"][0] == "failed"

    del smtp_server.plan.rcpt["reader0@example.org"]
    asked = terminal("send", "--week", "2025-W05", "--retry-failed", "--inline", answer="n\n")
    assert asked.exit_code == 1 and "Send again to 1 subscribers whose delivery failed? [y/N]" in asked.stderr
    assert "not sent: you answered no; the failed rows stay as they are\n" in asked.stderr
    retried = terminal("send", "--week", "2025-W05", "--retry-failed", "--inline", answer="y\n")
    assert retried.exit_code == 0, retried.output
    assert len(smtp_server.received) == 14


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_at_a_real_terminal_the_question_is_asked_and_answered(sample_engine, db_url, tmp_path):
    """The CLI as a subprocess on a pseudo-terminal: stdin really is a terminal here."""
    import os
    import pty
    import subprocess
    import sys
    import time
    from pathlib import Path

    outbox = tmp_path / "outbox"
    env = {**os.environ, "NEWSLETTER_DATABASE_URL": db_url, "NEWSLETTER_EMAIL_BACKEND": "file",
           "NEWSLETTER_OUTBOX_DIR": str(outbox), "NEWSLETTER_SECRET_KEY": "pty-secret"}
    newsletter = Path(sys.executable).with_name("newsletter")

    def answered(answer: bytes) -> tuple[int, str]:
        master, slave = pty.openpty()
        proc = subprocess.Popen([str(newsletter), "send", "--week", "2025-W05", "--inline"], stdin=slave,
                                stdout=slave, stderr=slave, env=env, cwd=tmp_path)
        os.close(slave)
        seen = b""
        deadline = time.monotonic() + 60
        while b"[y/N]: " not in seen and time.monotonic() < deadline:
            seen += os.read(master, 4096)
        os.write(master, answer)
        try:
            while chunk := os.read(master, 4096):
                seen += chunk
        except OSError:  # the terminal closed with the process
            pass
        return proc.wait(timeout=60), seen.decode()

    code, text = answered(b"n\n")
    assert code == 1 and "not sent: you answered no; nothing was planned" in text, text
    assert not outbox.exists()
    code, text = answered(b"y\n")
    assert code == 0, text
    assert "the guard's view of 2025-W05" in text and "Send to 25 subscribers? [y/N]: " in text
    assert len(list(outbox.glob("*.eml"))) == 25


# --- unknown rows are decided by an operator, on the record -----------------------------------


def _unknown_rows(cli, smtp_server, *addresses):
    for address in addresses:
        smtp_server.plan.data[address] = "drop"  # accepted, then the connection lost: unknown
    sent = cli("send", "--week", "2025-W05", "--inline")
    for address in addresses:
        del smtp_server.plan.data[address]
    assert sent.code == 1, sent.err


def test_unknown_rows_are_resolved_sent_or_resent_with_who_and_when(cli, smtp_server, engine):
    import getpass

    from tests.support.data import delivery_rows

    _unknown_rows(cli, smtp_server, "reader0@example.org", "reader1@example.org", "reader2@example.org")
    assert {a for a, (s, _) in ledger(engine, KEY).items() if s == "unknown"} == {
        "reader0@example.org", "reader1@example.org", "reader2@example.org"}
    before = cli("status", KEY)
    assert (f"  3 unknown rows (the reader has zero or one copy) wait for a decision: `newsletter deliveries "
            f"resolve {KEY} --sent|--resend (ADDR... | --all)`") in before.out
    received = len(smtp_server.received)

    marked = cli("deliveries", "resolve", KEY, "--sent", "Reader0@Example.org")
    assert marked.code == 0, marked.err
    assert marked.out.startswith(f"{KEY}: 1 unknown row marked sent (by {getpass.getuser()} at ")
    again = cli("deliveries", "resolve", KEY, "--resend", "reader0@example.org", "nobody@example.org")
    assert again.code == 1 and again.out.startswith(f"{KEY}: 0 unknown rows to be sent again")
    assert again.err == (f"error: reader0@example.org: not unknown in {KEY} (its row is sent): left as it is\n"
                         f"error: nobody@example.org: not unknown in {KEY} (no row in this edition): left as it is\n")

    resent = cli("deliveries", "resolve", KEY, "--resend", "--all")
    assert resent.code == 0 and f"{KEY}: 2 unknown rows to be sent again" in resent.out
    assert find_state(engine) == "sending"  # done until now: it has rows to send again
    assert cli("resume", KEY, "--inline").code == 0
    assert sorted(m.rcpt for m in smtp_server.received[received:]) == ["reader1@example.org", "reader2@example.org"]
    rows = delivery_rows(engine, KEY)
    assert [(rows[a].state, rows[a].resolution, rows[a].resolved_by) for a in
            ("reader0@example.org", "reader1@example.org", "reader2@example.org")] == [
        ("sent", "sent", getpass.getuser()), ("sent", "resend", getpass.getuser()),
        ("sent", "resend", getpass.getuser())]
    status = cli("status", KEY)
    assert "  resolved unknown rows: 1 marked sent, 2 sent again (last by " in status.out
    assert "wait for a decision" not in status.out and find_state(engine) == "done"
    data = json.loads(cli("status", KEY, "--json").out)
    assert (data["resolved"]["sent"], data["resolved"]["resend"]) == (1, 2)


@pytest.mark.parametrize("args", [("--sent", "--resend", "--all"), ("--sent",), ("--sent", "--all", "a@example.org")])
def test_resolve_needs_one_decision_and_addresses_or_all(cli, args):
    result = cli("deliveries", "resolve", KEY, *args)
    assert result.code == 2 and result.err.startswith("error: give ")


def find_state(engine) -> str:
    from worker.delivery.plan import find_edition

    return find_edition(engine, KEY).state


# --- a window that overlaps an edition that exists ----------------------------------------------

OVERLAP = ("error: not sent: 2025-01-27..2025-02-03 overlaps weekly-2025-W05 (done, 2025-W05: 2025-01-27 00:00 to "
           "2025-02-03 00:00 UTC); its readers would get the same stories twice. Nothing was planned; run it again "
           "with --allow-overlap to send anyway")


def test_a_manual_window_over_a_sent_week_is_refused_unless_allowed(cli, smtp_server, engine):
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    refused = cli("send", "--since", "2025-01-27", "--until", "2025-02-03", "--inline")
    assert refused.code == 1 and refused.out == ""
    assert OVERLAP in refused.err
    assert "  overlaps weekly-2025-W05 (done, 2025-W05: 2025-01-27 00:00 to 2025-02-03 00:00 UTC)" in refused.err
    assert ledger(engine, "manual-2025-01-27..2025-02-03") == {} and len(smtp_server.received) == 14
    one_day = cli("send", "--since", "2025-02-02", "--until", "2025-02-03", "--yes", "--inline")
    assert one_day.code == 1 and "overlaps weekly-2025-W05" in one_day.err  # --yes is not this decision

    dry = cli("send", "--since", "2025-01-27", "--until", "2025-02-03", "--dry-run")
    assert dry.code == 0 and dry.err.startswith(
        "warning: overlaps weekly-2025-W05 (done, 2025-W05: 2025-01-27 00:00 to 2025-02-03 00:00 UTC): `send` "
        "refuses it without --allow-overlap\n")
    allowed = cli("send", "--since", "2025-01-27", "--until", "2025-02-03", "--inline", "--allow-overlap")
    assert allowed.code == 0, allowed.err
    assert len(smtp_server.received) == 28


def test_the_next_week_and_a_forced_resend_do_not_overlap(cli, smtp_server, engine):
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    forced = cli("send", "--week", "2025-W05", "--inline", "--force")
    assert forced.code == 0 and f"{KEY}-force-2: planned" in forced.out  # --force is the decision
    after = cli("send", "--since", "2025-02-03", "--until", "2025-02-05", "--inline")
    assert "overlaps" not in after.err


def test_at_a_terminal_an_overlap_is_shown_and_refused_before_any_question(terminal, engine, smtp_server, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    assert terminal("send", "--week", "2025-W05", "--inline", "--yes").exit_code == 0
    refused = terminal("send", "--since", "2025-01-30", "--until", "2025-02-06", "--inline", answer="y\n")
    assert refused.exit_code == 1 and "[y/N]" not in refused.stderr
    assert "the guard's view of 2025-01-30..2025-02-06" in refused.stderr
    assert "  overlaps weekly-2025-W05 (done, 2025-W05: 2025-01-27 00:00 to 2025-02-03 00:00 UTC)" in refused.stderr
    assert "error: not sent: 2025-01-30..2025-02-06 overlaps weekly-2025-W05" in refused.stderr
    asked = terminal("send", "--since", "2025-01-30", "--until", "2025-02-06", "--inline", "--allow-overlap",
                     answer="n\n")
    assert asked.exit_code == 1 and "  overlaps weekly-2025-W05" in asked.stderr
    assert "Send to 14 subscribers? [y/N]: n\nnot sent: you answered no; nothing was planned\n" in asked.stderr
    assert len(smtp_server.received) == 14
