"""`celery -A worker worker -c 2` serves its pool processes' metrics on NEWSLETTER_METRICS_PORT."""

import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.data import add_subscribers, ledger, load_stories
from tests.support.worker import wait_for

KEY = "weekly-2025-W05"
pytestmark = pytest.mark.slow  # a real Celery worker process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _total(samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_real_send_is_counted_on_the_workers_metrics_port(engine, tmp_path, smtp_server, start_worker,
                                                            worker_env, run_cli):
    load_stories(engine, tmp_path)
    subscribers = add_subscribers(engine, 60)
    port = _free_port()
    worker = start_worker(concurrency=2, NEWSLETTER_METRICS_PORT=str(port))
    assert len(worker.children()) == 2
    before = _scrape(port)
    assert _total(before, "newsletter_messages_total") == 0

    result = run_cli("send", "--week", "2025-W05", "--wait", env=worker_env)
    assert result.code == 0, result.err + worker.output()[-2000:]
    sent = sum(1 for state in ledger(engine, KEY).values() if state[0] == "sent")
    assert sent == len(smtp_server.received) > 0

    # Counted by the pool processes, summed by the main process's exporter.
    def counted():
        samples = _scrape(port)
        return samples if _total(samples, "newsletter_messages_total") >= sent else None

    samples = wait_for(counted, timeout=10, what="every message counted")
    assert _total(samples, "newsletter_messages_total", outcome="sent", code="250") == sent
    assert _total(samples, "newsletter_messages_total") == sent
    assert _total(samples, "newsletter_smtp_transaction_seconds_count") == sent
    assert 1 <= _total(samples, "newsletter_smtp_connections_opened_total") <= 2 * 4  # 2 processes x 4 lanes
    for stage in ("render", "personalise", "mime", "ledger", "smtp"):
        assert _total(samples, "newsletter_stage_cpu_seconds_total", stage=stage) > 0, stage
    # Each region set inlined once across both processes (JP has no stories that week).
    sets = {regions for _, _, regions in subscribers if regions != "JP"}
    assert _total(samples, "newsletter_variants_inlined_total", inliner="premailer") == len(sets)
    assert "metrics: serving http://127.0.0.1:" in worker.output()

    worker.stop()
    assert worker.proc.returncode == 0, worker.output()[-2000:]
