"""The one metrics seam (worker/metrics.py): counts in this process, and the worker's exporter
summing its pool processes' counts in prometheus-client's multiprocess mode."""

import socket
import subprocess
import sys
import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from worker import metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_seam_counts_in_this_process():
    sent = ("newsletter_messages_total", {"outcome": "sent", "code": "250"})
    none = ("newsletter_messages_total", {"outcome": "temporary", "code": "none"})
    before = metrics.sample(sent[0], **sent[1]), metrics.sample(none[0], **none[1])
    cpu = metrics.sample("newsletter_stage_cpu_seconds_total", stage="ledger")
    metrics.count_message("sent", 250)
    metrics.count_message("sent", 250)
    metrics.count_message("temporary", None)
    with metrics.stage_cpu("ledger"):
        sum(range(200_000))
    assert metrics.sample(sent[0], **sent[1]) == before[0] + 2
    assert metrics.sample(none[0], **none[1]) == before[1] + 1
    assert metrics.sample("newsletter_stage_cpu_seconds_total", stage="ledger") > cpu


# A worker's main process sets up the exporter, then forks its pool; the pool processes count.
POOL = textwrap.dedent("""
    import os, sys, urllib.request
    from worker import metrics

    metrics.count_message("sent", 250)  # before the exporter: this process's own, not served
    port = metrics.serve_worker(int(sys.argv[1]))
    directory = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    for n in (3, 4):
        pid = os.fork()
        if pid == 0:
            for _ in range(n):
                metrics.count_message("sent", 250)
                metrics.observe_smtp_transaction(0.002)
            metrics.count_connection()
            with metrics.stage_cpu("render"):
                sum(range(100_000))
            os._exit(0)
        os.waitpid(pid, 0)  # exited: what it counted stays counted
    print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
    metrics.stop_worker()
    print("left:", os.path.exists(directory))
""")


@pytest.mark.slow
def test_the_worker_exporter_sums_its_pool_processes_even_after_they_exit():
    out = subprocess.run([sys.executable, "-c", POOL, str(_free_port())], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}).stdout
    text, left = out.rsplit("left:", 1)
    samples = _samples(text)
    assert samples[("newsletter_messages_total", (("code", "250"), ("outcome", "sent")))] == 7
    assert samples[("newsletter_smtp_transaction_seconds_count", ())] == 7
    assert samples[("newsletter_smtp_transaction_seconds_bucket", (("le", "0.0025"),))] == 7
    assert samples[("newsletter_smtp_connections_opened_total", ())] == 2
    assert samples[("newsletter_stage_cpu_seconds_total", (("stage", "render"),))] > 0
    assert left.strip() == "False"  # the temporary directory went with the exporter


def _taken_ports(count: int) -> list[socket.socket]:
    """`count` consecutive listening ports on 127.0.0.1, held by this process."""
    for _ in range(50):
        base = _free_port()
        held = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                held.append(s)
                s.bind(("127.0.0.1", port))
                s.listen()
            return held
        except OSError:
            for s in held:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


SERVE = ("import logging, os, sys; logging.basicConfig(format='%(levelname)s %(message)s'); from worker import metrics; r = metrics.serve_worker(int(sys.argv[1])); "
         "metrics.count_message('sent', 250); print(r, os.environ.get('PROMETHEUS_MULTIPROC_DIR')); "
         "metrics.stop_worker()")


def _serve(port: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", SERVE, str(port)], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_a_second_worker_on_the_host_serves_on_the_next_port_with_a_warning():
    taken = _taken_ports(1)
    try:
        port = taken[0].getsockname()[1]
        run = _serve(port)
    finally:
        taken[0].close()
    assert run.returncode == 0 and run.stdout.split()[0] == str(port + 1), run.stderr
    assert f"WARNING metrics: 127.0.0.1:{port} is taken (another worker on this host?); serving on port {port + 1}" \
        in run.stderr
    assert "ERROR" not in run.stderr


@pytest.mark.slow
def test_a_taken_port_costs_the_metrics_not_the_worker():
    taken = _taken_ports(1 + metrics._SPARE_PORTS)
    try:
        port = taken[0].getsockname()[1]
        run = _serve(port)
    finally:
        for s in taken:
            s.close()
    # No exporter, and no multiprocess mode left behind: the process counts in memory.
    assert run.returncode == 0 and run.stdout.split() == ["None", "None"], run.stderr
    assert f"WARNING metrics: cannot listen on 127.0.0.1:{port} or the 8 ports after it" in run.stderr
    assert "NEWSLETTER_METRICS_PORT=0" in run.stderr and "ERROR" not in run.stderr


def test_port_zero_is_off():
    assert metrics.serve_worker(0) is None


@pytest.mark.slow
def test_a_starting_worker_removes_what_killed_workers_left(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f"newsletter-metrics-{dead.pid}-abc"
    live = tmp_path / "newsletter-metrics-1-abc"  # pid 1 is alive: never touched
    other = tmp_path / "newsletter-metrics-notes"
    for path in (left, live, other):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"")
    code = ("import os, sys; from worker import metrics; metrics.serve_worker(int(sys.argv[1])); "
            "print(os.environ['PROMETHEUS_MULTIPROC_DIR']); metrics.stop_worker()")
    out = subprocess.run([sys.executable, "-c", code, str(_free_port())], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp_path)}).stdout
    own = out.strip()
    assert own.startswith(str(tmp_path / "newsletter-metrics-")) and not (tmp_path / own).exists()
    assert not left.exists() and live.exists() and other.exists()
