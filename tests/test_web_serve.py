"""Production serving: gunicorn through the app factory, and the compose file that runs it."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from worker.store.db import create_db_engine, upgrade_schema

NEWSLETTER = str(Path(sys.executable).parent / "newsletter")


def _compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_runs_the_web_app_under_gunicorn_with_the_operator_token():
    web = _compose()["services"]["web"]
    assert web["command"][:2] == ["newsletter", "serve"] and "--workers" in web["command"]
    env = web["environment"]
    assert "NEWSLETTER_OPERATOR_TOKEN" in env and "NEWSLETTER_DATABASE_URL" in env  # merged, not replaced
    assert "NEWSLETTER_OPERATOR_TOKEN" not in _compose()["services"]["worker"]["environment"]
    assert "/healthz" in " ".join(web["healthcheck"]["test"])


def test_compose_publishes_ports_on_loopback_only():
    published = [(name, port) for name, service in _compose()["services"].items()
                 for port in service.get("ports", [])]
    assert {name for name, _ in published} >= {"mailpit", "web"}
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def serve(tmp_path):
    """Start a server process with a migrated SQLite database; yields (base URL, process)."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    engine = create_db_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    started = []

    def start(args, **env):
        port = _free_port()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
        full_env.update({"NEWSLETTER_DATABASE_URL": url, **env})
        args = [a.replace("PORT", str(port)) for a in args]
        log = open(tmp_path / "server.log", "ab")
        proc = subprocess.Popen(args, env=full_env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        started.append(proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError((tmp_path / "server.log").read_text())
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    return base, proc
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("server not up:\n" + (tmp_path / "server.log").read_text())

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)


@pytest.mark.slow
def test_gunicorn_builds_the_app_from_the_environment(serve):
    base, _ = serve([sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:PORT", "--workers", "1",
                     "--no-control-socket", "worker.web:create_app_from_env()"], NEWSLETTER_OPERATOR_TOKEN="tok")
    assert httpx.get(base + "/healthz").text == "ok\n"
    assert httpx.get(base + "/").status_code == 401  # loopback, but a token is set
    page = httpx.get(base + "/?week=2025-W05", headers={"Authorization": "Bearer tok"})
    assert page.status_code == 200 and "No active subscribers yet" in page.text
    assert httpx.get(base + "/archive/weekly-2025-W05/RU").status_code == 404


@pytest.mark.slow
def test_serve_with_workers_becomes_gunicorn(serve):
    base, proc = serve([NEWSLETTER, "serve", "--port", "PORT", "--workers", "2"])
    assert httpx.get(base + "/").status_code == 200  # loopback, no token set
    # exec'd in place: the process we started is gunicorn's master, with its workers under it.
    cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"gunicorn" in cmdline and b"worker.web:create_app_from_env()" in cmdline
    assert b"--no-control-socket" in cmdline and cmdline[cmdline.index(b"--worker-class") + 1] == b"gthread"


@pytest.mark.slow
def test_serve_refuses_a_database_without_the_schema_before_starting(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    done = subprocess.run([NEWSLETTER, "serve", "--port", str(_free_port()), "--workers", "1"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "newsletter db upgrade" in done.stderr
