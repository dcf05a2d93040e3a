"""End to end with a real Celery worker process, real Redis, real SMTP, both databases."""

import json
import time

import pytest

from tests.support.data import REGION_SETS, add_subscribers, ledger, load_stories
from tests.support.smtp import arrivals_over_rate
from worker.regions import region_name

KEY = "weekly-2025-W05"
pytestmark = pytest.mark.slow  # real Celery worker processes


def test_an_edition_reaches_every_subscriber_exactly_once(engine, tmp_path, smtp_server, start_worker,
                                                          worker_env, run_cli):
    load_stories(engine, tmp_path)
    subscribers = add_subscribers(engine, 300)
    assert len({r for _, _, r in subscribers}) >= 6
    worker = start_worker()
    started = time.monotonic()
    result = run_cli("send", "--week", "2025-W05", "--wait", env=worker_env)
    elapsed = time.monotonic() - started
    assert result.code == 0, result.err + worker.output()[-2000:]
    received = smtp_server.by_recipient()
    skipped = {email for _, email, regions in subscribers if regions == "JP"}
    for _, email, _regions in subscribers:
        if email in skipped:
            assert received[email] == 0
            continue
        assert received[email] == 1, email
    for r in smtp_server.received[:40]:
        regions = next(reg for _, e, reg in subscribers if e == r.rcpt).split()
        text = r.message.get_body(("plain",)).get_content().replace("\r\n", "\n")
        headings = [text.index(f"\n{region_name(c)}\n") for c in regions]
        assert headings == sorted(headings)
        assert [c for c in REGION_SETS if " ".join(c) == " ".join(regions)]
    states = ledger(engine, KEY)
    assert {e for e, s in states.items() if s == ("skipped", "no-stories")} == skipped
    status = json.loads(run_cli("status", KEY, "--json", env=worker_env).out)
    assert status["state"] == "done"
    assert status["counts"]["sent"] == len(smtp_server.received) == 300 - len(skipped)
    assert status["counts"]["skipped"] == len(skipped)
    # Each region set was inlined once across both worker processes.
    log = worker.output()
    rendered = [line.split("rendered variant ", 1)[1].split(" ", 1)[0] for line in log.splitlines()
                if "rendered variant " in line]
    sets = {r.replace(" ", "-") for _, _, r in subscribers if r != "JP"}  # JP was skipped at planning
    assert sorted(rendered) == sorted(sets)
    print(f"\n{len(smtp_server.received)} messages through a 2-process worker in {elapsed:.2f}s "
          f"({len(smtp_server.received) / elapsed:.0f}/s, including planning and --wait polling)")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_the_send_rate_holds_across_two_workers(engine, tmp_path, smtp_server, start_worker, worker_env,
                                                run_cli, redis_url):
    """NEWSLETTER_SEND_RATE=r is one token bucket in Redis shared by every worker, burst one
    (worker/delivery/ratelimit.py): a token is taken before each message, and two tokens are
    never handed out less than 1/r s apart, so over any span of W seconds at most r*W + 1 are.

    The server sees a message some time after its token was taken. A process sends with one
    lane under a rate limit and takes its next token only after its previous message was
    answered, so at the start of any window each sending process has at most one message
    whose token came before the window. Hence the property checked on the server's receive
    times: over every window of W seconds, at most r*W + 1 + P messages arrive (P = 2
    processes here). It holds whatever the machine's load (a slow machine only spreads the
    messages out). Checked on every window between two of 100 arrivals, over ~5 s; a limiter
    per worker (2r), a bigger burst, or one 10 % fast would break it. The upper bound says
    nothing about a stalled limiter; that all 100 arrived through `--wait` is the liveness.
    """
    import redis

    load_stories(engine, tmp_path)
    everyone = {email for _, email, _ in add_subscribers(engine, 100, sets=[("RU",), ("UA",)])}
    rate, processes = 20, 2
    start_worker("w1", concurrency=1, NEWSLETTER_SEND_RATE=str(rate), NEWSLETTER_BATCH_SIZE="5")
    start_worker("w2", concurrency=1, NEWSLETTER_SEND_RATE=str(rate), NEWSLETTER_BATCH_SIZE="5")
    result = run_cli("send", "--week", "2025-W05", "--wait",
                     env={**worker_env, "NEWSLETTER_BATCH_SIZE": "5"})
    assert result.code == 0, result.err
    assert smtp_server.by_recipient() == dict.fromkeys(everyone, 1)
    times = sorted(r.at for r in smtp_server.received)
    over = arrivals_over_rate(times, rate=rate, allowance=1 + processes)
    assert not over, f"(start, messages, seconds) over {rate}/s: {over[:5]}"
    # Both workers took their tokens from the one shared bucket, never slowed below the setting.
    assert float(redis.Redis.from_url(redis_url).hget("newsletter:send-rate", "rate")) == rate
    print(f"\n{len(times)} messages in {times[-1] - times[0]:.2f}s "
          f"({(len(times) - 1) / (times[-1] - times[0]):.1f}/s at a limit of {rate}/s)")


def test_a_worker_not_ready_for_real_mail_exits_with_the_reasons(tmp_path, worker_env):
    """Over SMTP, a worker with the sample name and address, a local public URL and a weak
    key never starts; the file backend's worker does, as before."""
    from tests.support.worker import WorkerProcess

    env = {**worker_env, "NEWSLETTER_SMTP_SINK": "false", "NEWSLETTER_SECRET_KEY": "change-me",
           "NEWSLETTER_PUBLIC_URL": "http://127.0.0.1:8000"}
    with pytest.raises(RuntimeError, match="worker exited with 2") as exited:
        WorkerProcess(env, tmp_path / "sample.log", name="sample", concurrency=1).start()
    assert ("error: not ready for real mail (NEWSLETTER_EMAIL_BACKEND=smtp): NEWSLETTER_NEWSLETTER_NAME: is the "
            "sample 'Melange News Weekly'") in str(exited.value)
    for setting in ("NEWSLETTER_POSTAL_ADDRESS", "NEWSLETTER_PUBLIC_URL", "NEWSLETTER_SECRET_KEY: is a placeholder"):
        assert setting in str(exited.value)
    worker = WorkerProcess({**env, "NEWSLETTER_EMAIL_BACKEND": "file", "NEWSLETTER_OUTBOX_DIR": str(tmp_path)},
                           tmp_path / "file.log", name="file", concurrency=1).start()
    worker.stop()


def test_a_worker_with_a_misspelt_setting_exits_with_one_line(tmp_path, worker_env):
    from tests.support.worker import WorkerProcess

    env = {**worker_env, "NEWSLETTER_BROKR_URL": "redis://elsewhere:6379/0"}
    with pytest.raises(RuntimeError, match="worker exited with 2") as exited:
        WorkerProcess(env, tmp_path / "typo.log", name="typo", concurrency=1).start()
    assert "error: NEWSLETTER_BROKR_URL is not a setting: did you mean NEWSLETTER_BROKER_URL?" in str(exited.value)
    assert "Traceback" not in str(exited.value)
