"""The console benchmark stays runnable: at a tiny size it fills its database, serves the
app under gunicorn and reports every page of its list (what it measures is reported in
docs/benchmarks.md, never asserted here)."""

import json
import subprocess
import sys
import uuid

import pytest
from werkzeug.exceptions import MethodNotAllowed, NotFound

from bench.console import pages
from tests.conftest import REPO
from worker.settings import Settings
from worker.store.db import create_db_engine
from worker.web import create_app


def _routed(app, path: str) -> bool:
    try:
        app.url_map.bind("localhost").match(path.split("?")[0], method="GET")
    except (NotFound, MethodNotAllowed):
        return False
    return True


@pytest.mark.slow
def test_the_console_benchmark_times_every_page_of_its_list(pg_url, tmp_path):
    out = tmp_path / "console.json"
    database = f"nl_test_bench_console_{uuid.uuid4().hex[:8]}"
    subprocess.run([sys.executable, "bench/console.py", "--readers", "2000", "--editions", "3", "--runs", "2",
                    "--database", database, "--json", str(out)],
                   cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    report = json.loads(out.read_text())

    assert report["kept"] is False and report["fill"]["total"] > 0
    assert report["size"]["subscribers"]["rows"] == 2000 and report["size"]["editions"]["rows"] == 3
    # Every edition has a row for each reader on the list then, none for those signed up since.
    assert 0 < report["size"]["deliveries"]["rows"] <= 3 * 2000

    engine = create_db_engine(pg_url)
    app = create_app(Settings(database_url=pg_url, secret_key="test-secret-key", timezone="UTC"), engine)
    engine.dispose()
    listed = [name for name, _ in pages(2000, ["weekly-2026-W01"])]
    assert [p["name"] for p in report["pages"]] == listed
    for found in report["pages"]:
        if found["name"] == "subscribers, next page" and found["status"] is None:
            # Followed from the list's own link: missing only while the list is.
            assert not _routed(app, "/operator/subscribers"), found
            continue
        # A page the app has answers 200, timed each run; one it does not have yet is a clear 404.
        if _routed(app, found["path"]):
            assert found["status"] == 200, found
            assert len(found["runs_ms"]) == 2 and found["median_ms"] is not None, found
        else:
            assert found["status"] == 404 and found["verdict"] == "NOT BUILT (404)", found
    export = report["export"]
    assert export["status"] == (200 if _routed(app, export["path"]) else 404)
    assert export["total_ms"] >= export["first_byte_ms"] >= 0
