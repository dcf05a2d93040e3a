"""The benchmarks stay runnable (what they measure is reported in the README, never asserted here)."""

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_ledger_benchmark_runs_every_row_to_sent(pg_url):
    out = subprocess.run([sys.executable, "bench/ledger.py", "--rows", "300", "--lanes", "3", "--group", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    report = json.loads(out)
    assert report["states"] == {"sent": 300} and report["rows"] == 300


def test_the_pipeline_benchmark_parses_its_options():
    out = subprocess.run([sys.executable, "bench/run.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    for option in ("--subscribers", "--naive", "--plan", "--repeat", "--relay-delay-ms", "--set"):
        assert option in out
