"""The README's quickstart is what CI runs."""

import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO


def _quickstart():
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```sh\n(.*?)```", text, re.S)
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_is_exactly_two_commands_and_ci_runs_them():
    commands = _quickstart()
    assert len(commands) == 2
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci


# The worker block ("The worker, beat and the web app") works as written on a fresh machine.

LONG_RUNNING = ("celery ", "newsletter serve", "newsletter send", "newsletter status")


def _worker_block() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = re.search(r"### The worker, beat and the web app\n\n```sh\n(.*?)```", text, re.S)
    return [line.split("  #")[0].rstrip() for line in block.group(1).splitlines() if line.strip()]


def _block_env(lines: list[str]) -> dict[str, str]:
    """The NEWSLETTER_* variables the block's exports set, evaluated by a real shell."""
    exports = "\n".join(line for line in lines if line.startswith("export "))
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    out = subprocess.run(["bash", "-ec", exports + "\nenv -0"], env=env, capture_output=True, check=True).stdout
    pairs = (item.split("=", 1) for item in out.decode().split("\0") if item.startswith("NEWSLETTER_"))
    return dict(pairs)


def test_the_worker_block_creates_the_database_it_names():
    from sqlalchemy import make_url

    lines = _worker_block()
    url = make_url(_block_env(lines)["NEWSLETTER_DATABASE_URL"])
    [createdb] = [line for line in lines if line.startswith("createdb ")]
    assert shlex.split(createdb) == ["createdb", "-h", url.host, "-U", url.username, url.database]
    assert lines.index(createdb) < lines.index("newsletter db upgrade")


def test_the_worker_block_sets_every_setting_the_worker_needs():
    from worker.readiness import require_ready
    from worker.settings import load_settings, unknown_env_vars

    env = _block_env(_worker_block())
    assert unknown_env_vars(env) == []
    # Where `newsletter serve` answers by default: every mail's links must open there.
    assert env["NEWSLETTER_PUBLIC_URL"] == "http://127.0.0.1:8000"
    settings = load_settings({**env, "NEWSLETTER_CONFIG": os.devnull})
    require_ready(settings)  # the worker starts and `send` sends (Mailpit: a sink)
    assert settings.email_backend == "smtp" and settings.smtp_sink


@pytest.mark.slow  # four `newsletter` processes and a PostgreSQL database
def test_the_worker_block_runs_as_written_on_a_fresh_database(tmp_path):
    """Every command of the block but the long-running ones, on a database that does not
    exist yet (its name made unique, so runs never share one)."""
    from sqlalchemy import make_url

    from tests.conftest import PG_ADMIN_URL

    lines = _worker_block()
    url = make_url(_block_env(lines)["NEWSLETTER_DATABASE_URL"])
    admin = make_url(PG_ADMIN_URL)
    if (admin.host, admin.port or 5432, admin.username) != (url.host, url.port, url.username):
        pytest.skip(f"the test PostgreSQL is not the README's ({url.host}:{url.port} as {url.username})")
    name = f"nl_test_readme_{uuid.uuid4().hex[:12]}"
    script = "\n".join(line.replace(f"/{url.database}", f"/{name}").replace(f" {url.database}", f" {name}")
                       for line in lines if not line.startswith(LONG_RUNNING))
    (tmp_path / "examples").symlink_to(REPO / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    try:
        run = subprocess.run(["bash", "-ec", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "schema upgraded from empty to" in run.stdout
        assert (tmp_path / "var" / "preview" / "digest.html").exists()
    finally:
        subprocess.run(["dropdb", "--if-exists", "-h", url.host, "-U", url.username, name], check=False)


def test_a_database_that_does_not_exist_says_how_to_create_it(tmp_path):
    """A newcomer who skips createdb gets one line with it, not a traceback."""
    from sqlalchemy import make_url

    url = make_url(_block_env(_worker_block())["NEWSLETTER_DATABASE_URL"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_DATABASE_URL"] = str(url.set(database="nl_test_never_created"))
    for command in (["db", "upgrade"], ["status"]):
        run = subprocess.run([str(Path(sys.executable).parent / "newsletter"), *command], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=60)
        if "Connection refused" in run.stderr:
            pytest.skip("PostgreSQL is not running")
        assert (run.returncode, run.stdout) == (2, "")
        assert run.stderr == (
            f"error: PostgreSQL database 'nl_test_never_created' does not exist (postgresql+psycopg://"
            f"{url.username}@{url.host}:{url.port}/nl_test_never_created): create it with `createdb -h {url.host} "
            f"-p {url.port} -U {url.username} nl_test_never_created` (or, as a superuser, CREATE DATABASE "
            f"\"nl_test_never_created\" OWNER \"{url.username}\";), then run `newsletter db upgrade`\n")
