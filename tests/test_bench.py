"""The benchmarks stay runnable (what they measure is reported in docs/, never asserted here)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from bench.run import parser
from tests.conftest import REPO


@pytest.mark.slow
def test_the_ledger_benchmark_runs_every_row_to_sent(pg_url):
    out = subprocess.run([sys.executable, "bench/ledger.py", "--rows", "300", "--lanes", "3", "--group", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    report = json.loads(out)
    assert report["states"] == {"sent": 300} and report["rows"] == 300


@pytest.mark.slow
def test_the_pipeline_benchmark_parses_its_options():
    out = subprocess.run([sys.executable, "bench/run.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for option in ("--subscribers", "--naive", "--plan", "--repeat", "--relay-delay-ms", "--set",
                   "--worker-groups", "--concurrency"):
        assert option in out


def test_one_worker_group_of_two_processes_is_the_default_and_groups_are_counted():
    assert (parser().parse_args([]).worker_groups, parser().parse_args([]).concurrency) == (1, 2)
    args = parser().parse_args(["--worker-groups", "2", "--concurrency", "1"])
    assert (args.worker_groups, args.concurrency) == (2, 1)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("smtp-sink"), reason="needs Postfix's smtp-sink and smtp-source")
def test_two_worker_groups_deliver_one_edition_between_them(pg_url, redis_url):
    env = {**os.environ, "NEWSLETTER_BENCH_REDIS_URL": redis_url}
    out = subprocess.run([sys.executable, "bench/run.py", "--subscribers", "300", "--naive", "0",
                          "--worker-groups", "2", "--concurrency", "1"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=True).stdout
    pipeline = json.loads(out)["pipeline"]
    assert pipeline["states"] == {"sent": 300} and pipeline["sink_received"] == 300
    groups = pipeline["worker_groups"]
    assert [g["node"].split("@")[0] for g in groups] == ["bench1", "bench2"]
    assert sum(g["messages"] for g in groups) == 300


def test_the_profile_summary_charges_each_sample_to_the_stage_its_stack_enters(tmp_path):
    from bench.stacks import summarise

    raw = tmp_path / "bench1.txt"
    raw.write_text(
        'process 1:"celery";_run_lane (worker/delivery/pipeline.py:1);_deliver (worker/delivery/pipeline.py:2);'
        "SmtpSender.send (worker/delivery/smtp.py:3);SMTP.getreply (smtplib.py:4) 30\n"
        'process 1:"celery";_run_lane (worker/delivery/pipeline.py:1);_prepare (worker/delivery/pipeline.py:5);'
        "compose (worker/render/compose.py:6);_sign (worker/render/compose.py:7) 10\n")
    out = summarise([raw], messages=100, rate=200, top=5, only=None)
    stages = {line.split()[0]: line.split()[1:] for line in out.split("\n\n")[1].splitlines()[1:]}
    assert stages == {"smtp": ["1.500", "75.0%"], "compose": ["0.500", "25.0%"]}
    assert "smtplib.py:SMTP.getreply" in out


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("smtp-sink"), reason="needs Postfix's smtp-sink")
def test_the_hot_path_benchmark_sends_every_row(pg_url):
    out = subprocess.run([sys.executable, "bench/hotpath.py", "--rows", "200"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    report = json.loads(out)
    assert report["sent"] == report["rows"] == 200
    assert set(report["thread_cpu_ms_per_message"]) == {"variant lookup", "compose", "ledger", "smtp"}


@pytest.mark.slow
def test_the_render_benchmark_finds_both_paths_equal():
    out = subprocess.run([sys.executable, "bench/render.py", "--sets", "40", "--repeat", "1"], cwd=REPO,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    report = json.loads(out)
    assert set(report) == {"premailer", "css-inline"}
    for figures in report.values():
        assert figures["identical"] and figures["fallbacks"] == {} and figures["region_sets"] == 40
        assert figures["inliner_calls"]["reference"] == 40
