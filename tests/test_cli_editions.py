"""`send`, `resume` and `--dry-run` on editions that exist, forced keys and empty weeks,
as an operator meets them (real CLI in-process, both databases)."""

import json
import time

import pytest

from tests.support.data import add_subscribers, ledger, load_stories
from worker.delivery.plan import find_edition

KEY = "weekly-2025-W05"
NO_BROKER = "redis://127.0.0.1:1/0"  # nothing listens there: a command that needs no broker must not ask


@pytest.fixture
def cli(cli):
    """The shared `cli`, with retries due at once and no broker to ask."""
    return lambda *args, **extra: cli(*args, **{"NEWSLETTER_RETRY_BASE_SECONDS": "0.001",
                                                "NEWSLETTER_BROKER_URL": NO_BROKER, **extra})


# --- any edition key: --retry-failed and resume ---------------------------------------------


def test_retry_failed_works_on_a_forced_edition(cli, smtp_server, engine):
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    assert cli("send", "--week", "2025-W05", "--force", "--inline").code == 0
    smtp_server.plan.rcpt["reader0@example.org"] = "451 4.3.0 busy"
    assert cli("send", "--week", "2025-W05", "--force", "--inline", NEWSLETTER_MAX_ATTEMPTS="1").code == 1
    forced = f"{KEY}-force-3"
    assert ledger(engine, forced)["reader0@example.org"] == ("failed", None)
    del smtp_server.plan.rcpt["reader0@example.org"]
    # --week names only the original edition, which has nothing to retry: why it could not be done.
    assert f"{KEY}: 0 failed rows re-queued" in cli("send", "--week", "2025-W05", "--retry-failed").out
    result = cli("send", "--edition", forced, "--retry-failed", "--inline")
    assert result.code == 0, result.err
    assert f"{forced}: 1 failed rows re-queued" in result.out
    assert ledger(engine, forced)["reader0@example.org"] == ("sent", None)
    assert smtp_server.by_recipient()["reader0@example.org"] == 3
    assert find_edition(engine, forced).state == "done"


def test_retry_failed_works_on_a_manual_edition_by_key(cli, smtp_server, engine):
    smtp_server.plan.rcpt["reader3@example.org"] = "451 4.3.0 busy"
    key = "manual-2025-01-27..2025-02-03"
    assert cli("send", "--since", "2025-01-27", "--until", "2025-02-03", "--inline",
               NEWSLETTER_MAX_ATTEMPTS="1").code == 1
    del smtp_server.plan.rcpt["reader3@example.org"]
    result = cli("send", "--edition", key, "--retry-failed", "--inline")
    assert result.code == 0, result.err
    assert ledger(engine, key)["reader3@example.org"] == ("sent", None)


def test_resume_works_on_a_forced_edition(cli, smtp_server, engine):
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    smtp_server.plan.data_all = "554 5.7.1 spam"
    paused = cli("send", "--week", "2025-W05", "--force", "--inline")
    assert paused.code == 1 and f"{KEY}-force-2" in paused.out
    assert find_edition(engine, f"{KEY}-force-2").state == "paused"
    smtp_server.plan.data_all = None
    resumed = cli("resume", f"{KEY}-force-2", "--inline")
    assert resumed.code == 0, resumed.err
    assert f"{KEY}-force-2: resumed" in resumed.out
    assert len(smtp_server.received) == 28 and max(smtp_server.by_recipient().values()) == 2


def test_an_edition_left_pending_by_a_broker_outage_goes_out_with_inline_as_the_error_says(cli, smtp_server,
                                                                                         engine):
    down = cli("send", "--week", "2025-W05")
    assert down.code == 2 and "--inline sends now" in down.err
    again = cli("send", "--week", "2025-W05", "--inline")
    assert again.code == 0, again.err
    assert "Still sending: continuing it." in again.out
    assert len(smtp_server.received) == 14


def test_resume_continues_a_sending_edition_and_points_a_done_one_at_retry(cli, smtp_server, engine):
    assert cli("send", "--week", "2025-W05").code == 2  # broker down: rows stay pending
    result = cli("resume", KEY, "--inline")
    assert result.code == 0, result.err
    assert f"{KEY}: still sending; handing out its due rows now" in result.out
    assert len(smtp_server.received) == 14

    smtp_server.plan.rcpt["reader0@example.org"] = "451 4.3.0 busy"
    assert cli("send", "--week", "2025-W05", "--force", "--inline", NEWSLETTER_MAX_ATTEMPTS="1").code == 1
    done = cli("resume", f"{KEY}-force-2")
    assert done.code == 2
    assert done.err == (f"error: {KEY}-force-2 is done; only a paused or sending edition can be resumed; "
                        f"`newsletter send --edition {KEY}-force-2 --retry-failed` re-queues its 1 failed rows\n")


def test_a_week_given_as_an_edition_key_is_pointed_at_its_edition(cli):
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    result = cli("status", "2025-W05")
    assert (result.code, result.err) == (
        2, f"error: no edition '2025-W05'; did you mean {KEY}? (see `newsletter status`)\n")
    assert cli("status", "2025-W06").err == "error: no edition '2025-W06' (see `newsletter status`)\n"


def test_edition_excludes_a_window_and_force_on_it_copies_the_original(cli, engine):
    assert cli("send", "--edition", KEY, "--week", "2025-W05").err == (
        "error: give --edition, or --week or --since/--until, not both\n")
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    assert cli("send", "--edition", KEY, "--force", "--inline").code == 0
    dry = cli("send", "--edition", f"{KEY}-force-2", "--force", "--dry-run")
    assert dry.out.startswith(f"dry run of {KEY}-force-3 (2025-W05): nothing is sent or recorded\n")
    result = cli("send", "--edition", f"{KEY}-force-2", "--force", "--inline")
    assert result.code == 0, result.err
    assert result.out.startswith(f"{KEY}-force-3: planned (forced re-send of {KEY} by ")
    assert cli("send", "--edition", "weekly-1999-W01", "--retry-failed").err == (
        "error: no edition 'weekly-1999-W01' (see `newsletter status`)\n")


# --- dry run, force, following ------------------------------------------------------------


def test_dry_run_of_an_existing_edition_says_it_exists_and_that_send_would_do_nothing(cli, smtp_server, engine):
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    dry = cli("send", "--week", "2025-W05", "--dry-run")
    assert dry.code == 0, dry.err
    assert "would send" not in dry.out
    assert dry.out == (f"dry run: {KEY} already exists: done, 14 sent, 2 skipped. `send` would do nothing "
                       f"(--retry-failed re-queues failed rows, --force sends again as {KEY}-force-2)\n")
    retry = cli("send", "--week", "2025-W05", "--dry-run", "--retry-failed")
    assert retry.out == f"dry run: {KEY} (done): --retry-failed would re-queue 0 failed rows\n"
    forced = cli("send", "--week", "2025-W05", "--dry-run", "--force")
    assert forced.code == 0, forced.err
    assert f"dry run of {KEY}-force-2 (2025-W05): nothing is sent or recorded" in forced.out
    assert "would send 14, skip 2 (no-stories), 8 region sets" in forced.out
    assert find_edition(engine, f"{KEY}-force-2") is None and len(smtp_server.received) == 14


def test_force_prints_its_planned_count(cli, engine):
    assert cli("send", "--week", "2025-W05", "--inline").code == 0
    result = cli("send", "--week", "2025-W05", "--force", "--inline")
    assert result.code == 0, result.err
    first = result.out.splitlines()[0]
    assert first.startswith(f"{KEY}-force-2: planned (forced re-send of {KEY} by ")
    assert first.endswith("): 16 deliveries, 14 to send, 2 skipped (2 no-stories)")


@pytest.mark.slow
def test_send_without_wait_says_how_to_follow_and_the_advice_works(run_cli, engine, tmp_path, worker_env,
                                                                     start_worker):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    sent = run_cli("send", "--week", "2025-W05", env=worker_env)
    assert sent.code == 0, sent.err
    assert (f"follow it with `newsletter status {KEY}`, or wait for it: "
            f"`newsletter send --edition {KEY} --wait`") in sent.out
    start_worker()
    followed = run_cli("send", "--edition", KEY, "--wait", env=worker_env)
    assert followed.code == 0, followed.err
    assert "Still sending: continuing it." in followed.out
    assert find_edition(engine, KEY).state == "done"
    assert json.loads(run_cli("status", KEY, "--json", env=worker_env).out)["counts"]["sent"] == 14


# --- an edition with nothing to send ----------------------------------------------------------


def test_a_week_without_stories_says_nobody_got_it_and_exits_1(cli, smtp_server, engine):
    result = cli("send", "--week", "2025-W07")  # the broker is down: it must not even be asked
    assert result.code == 1
    assert "weekly-2025-W07: planned 16 deliveries, 0 to send, 16 skipped (16 no-stories)" in result.out
    assert result.err == (
        "weekly-2025-W07: nothing was sent: nobody had stories in their regions: all 16 subscribers skipped "
        "(no-stories); 2025-W07 has no stories at all (`newsletter stories import SOURCE`)\n")
    assert find_edition(engine, "weekly-2025-W07").state == "done"
    status = cli("status", "weekly-2025-W07").out
    assert "nothing was sent: nobody had stories in their regions in 2025-W07" in status
    again = cli("send", "--week", "2025-W07")
    assert again.code == 0 and "already exists: done, 16 skipped (nothing was sent: nobody had stories" in again.out


def test_wait_on_an_empty_week_ends_at_once(cli, engine):
    start = time.monotonic()
    result = cli("send", "--week", "2025-W07", "--wait")
    assert result.code == 1 and "nothing was sent" in result.err
    assert time.monotonic() - start < 10


def test_stories_only_in_regions_nobody_follows_are_named_as_such(cli, engine, tmp_path):
    path = tmp_path / "jp.json"
    path.write_text(json.dumps([{"id": "jp-1", "url": "https://news.example/jp/1", "title": "JP",
                                 "regions": ["JP"], "published_at": "2025-02-12T10:00:00Z"}]))
    assert cli("stories", "import", str(path)).code == 0
    cli("subscribers", "remove", "reader7@example.org")  # the JP readers leave
    cli("subscribers", "remove", "reader15@example.org")
    result = cli("send", "--week", "2025-W07", "--inline")
    assert result.code == 1
    assert "2025-W07 has 1 story, all in regions nobody follows (`newsletter stories list --week 2025-W07`)" \
        in result.err


def test_a_custom_window_with_nothing_to_send_says_so_and_exits_0(cli):
    result = cli("send", "--since", "2025-02-10", "--until", "2025-02-17")
    assert result.code == 0
    assert "manual-2025-02-10..2025-02-17: nothing was sent: nobody had stories in their regions" in result.err


def test_no_active_subscribers_is_said_plainly(run_cli, engine, tmp_path):
    load_stories(engine, tmp_path)
    result = run_cli("send", "--week", "2025-W05", env={"NEWSLETTER_SECRET_KEY": "k",
                                                        "NEWSLETTER_BROKER_URL": NO_BROKER})
    assert result.code == 1
    assert "weekly-2025-W05: nothing was sent: there are no active subscribers" in result.err


def test_dry_run_of_an_empty_week_warns(cli):
    result = cli("send", "--week", "2025-W07", "--dry-run")
    assert result.code == 0
    assert "would send 0, skip 16 (no-stories)" in result.out
    assert "warning: nothing would be sent: nobody had stories in their regions" in result.err
