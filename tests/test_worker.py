"""End to end with a real Celery worker process, real Redis, real SMTP, both databases."""

import json
import time

import pytest

from tests.support.data import REGION_SETS, add_subscribers, ledger, load_stories
from worker.regions import region_name

KEY = "weekly-2025-W05"


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
                                                run_cli):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 70, sets=[("RU",), ("UA",)])
    rate = 20
    start_worker("w1", concurrency=1, NEWSLETTER_SEND_RATE=str(rate), NEWSLETTER_BATCH_SIZE="5")
    start_worker("w2", concurrency=1, NEWSLETTER_SEND_RATE=str(rate), NEWSLETTER_BATCH_SIZE="5")
    result = run_cli("send", "--week", "2025-W05", "--wait",
                     env={**worker_env, "NEWSLETTER_BATCH_SIZE": "5"})
    assert result.code == 0, result.err
    times = sorted(r.at for r in smtp_server.received)
    assert len(times) == 70
    # In any one-second window the server saw at most `rate` messages (+1 for edge timing).
    worst = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert worst <= rate + 1, worst
    overall = (len(times) - 1) / (times[-1] - times[0])
    assert overall <= rate * 1.05, overall
    assert max(smtp_server.by_recipient().values()) == 1
