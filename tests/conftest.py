"""Shared fixtures: both databases, an isolated working directory, the CLI.

PostgreSQL comes from NEWSLETTER_TEST_POSTGRES_URL (an admin URL; each test
session creates and drops its own database). Without it the local server on
127.0.0.1:5432 is tried. Under CI=true an unreachable service fails the run
instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa

from worker.settings import Settings
from worker.store.db import create_db_engine, upgrade_schema
from worker.store.models import Base

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ADMIN_URL = os.environ.get(
    "NEWSLETTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def unavailable(what: str, exc: BaseException) -> None:
    message = f"{what} unavailable: {exc}"
    if IN_CI:
        pytest.fail(message + " (CI=true: services must be up)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own folder with no NEWSLETTER_* settings leaking in."""
    for name in list(os.environ):
        if name.startswith("NEWSLETTER_") and not name.startswith("NEWSLETTER_TEST_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    admin = sa.make_url(PG_ADMIN_URL)
    name = f"nl_test_{uuid.uuid4().hex[:10]}"
    try:
        engine = create_db_engine(str(admin))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        unavailable("PostgreSQL", exc)
    url = admin.set(database=name).render_as_string(hide_password=False)
    upgrade_schema(create_db_engine(url))
    yield url
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()



@pytest.fixture(autouse=True)
def _fresh_renders():
    """The pipeline keeps its renderers per process, keyed by database, edition id, key and
    creation time; tests repeat all four (ids restart in each test database, clocks are
    frozen), so a renderer of another test's database must neither be used nor be left."""
    from worker.delivery import pipeline

    pipeline._RENDERERS.clear()
    yield
    pipeline._RENDERERS.clear()


@pytest.fixture
def cli(run_cli, engine, smtp_server, tmp_path):
    """`newsletter ARGS` against the test database, the sample week's stories and 16
    subscribers, delivering to the test SMTP server; keyword arguments add settings."""
    from tests.support.data import add_subscribers, load_stories

    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    env = {"NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
           "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SMTP_TIMEOUT": "2",
           "NEWSLETTER_SECRET_KEY": "cli-secret-kN3q8zR5vT1wY7pL2mD6sH9f", "NEWSLETTER_FROM": "News <digest@news.example>",
           # aiosmtpd keeps what it gets: sample name, address and public URL are fine (worker/readiness.py)
           "NEWSLETTER_SMTP_SINK": "true"}

    def run(*args, **extra):
        return run_cli(*args, env={**env, **extra})

    return run

def _truncate(engine: sa.Engine) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty SQLite file, made once: each test copies it (running every
    migration for each of the SQLite tests cost more than a tenth of the fast tier)."""
    path = tmp_path_factory.mktemp("template") / "test.db"
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade_schema(engine)
    engine.dispose()
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database of each kind."""
    if request.param == "sqlite":
        path = tmp_path / "test.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("pg_url")
        engine = create_db_engine(url)
        _truncate(engine)
        engine.dispose()
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    # The broker, and so the sign-up limits' store, is the test Redis database: never the
    # default database 0, where a developer's own worker and web app keep theirs.
    _forget_signup_limits()
    return Settings(
        database_url=db_url,
        broker_url=REDIS_URL,
        outbox_dir=tmp_path / "outbox",
        preview_dir=tmp_path / "preview",
        secret_key="test-secret-key",
        timezone="UTC",
    )


def _forget_signup_limits() -> None:
    """Each test starts with no sign-up counted: limits are per hour and per day, and
    one test's sign-ups must not refuse the next one's."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3, socket_connect_timeout=3)
        keys = [*client.scan_iter("LIMITS:LIMITER/newsletter-subscribe/*", count=1000),
                *client.scan_iter("newsletter-subscribe/*", count=1000)]
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass  # no Redis here: the tests that need it say so themselves


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, db_url: str):
    """Run `newsletter ARGS` in-process against the test database; returns code, stdout, stderr."""
    from worker.cli import main

    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", db_url)

    def run(*args: str, env: dict[str, str] | None = None) -> CliResult:
        for key, value in (env or {}).items():
            monkeypatch.setenv(key, value)
        capsys.readouterr()
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def sample_engine(engine):
    """The test database with the bundled sample stories and subscribers."""
    from worker.ingest import import_sources
    from worker.readers.subscribers import import_csv

    report = import_sources(engine, [str(EXAMPLES / "stories.json")])
    assert not report.rejected
    assert not import_csv(engine, EXAMPLES / "subscribers.csv").rejected
    return engine


@pytest.fixture
def smtp_server():
    from tests.support.smtp import SmtpServer

    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def smtp_settings(settings, smtp_server):
    """Settings that deliver to the test SMTP server; retries come due at once."""
    return settings.model_copy(update={
        "email_backend": "smtp", "smtp_host": "127.0.0.1", "smtp_port": smtp_server.port,
        "smtp_timeout": 2.0, "retry_base_seconds": 0.001, "from_address": "Melange News <digest@news.example>",
        "public_url": "https://news.example",
    })


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under `-n 2 --dist loadgroup` (the default options) the slow tests run one after another
    on one worker while the other takes the fast ones: two real worker processes, beats and
    fault timings on two cores at once would only slow each other past their timeouts."""
    for item in items:
        if item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.xdist_group("slow"))


def per_xdist_worker(url: str) -> str:
    """Under `pytest -n N` each worker (gw0, gw1, ...) empties its own Redis database: the
    named one plus the worker's number, modulo Redis's 16; without -n the URL is unchanged."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or worker == "gw0":
        return url
    base, db = url.rsplit("/", 1)
    return f"{base}/{(int(db or 0) + int(worker[2:])) % 16}"


REDIS_URL = per_xdist_worker(os.environ.get("NEWSLETTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/13"))


@pytest.fixture
def redis_url() -> str:
    """A Redis database emptied for this test."""
    import redis

    try:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=3)
        client.flushdb()
    except Exception as exc:  # noqa: BLE001
        unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture
def worker_env(smtp_settings, redis_url, smtp_server) -> dict[str, str]:
    """The environment a worker process (or the CLI) needs to deliver to the test SMTP server."""
    s = smtp_settings
    return {
        "NEWSLETTER_DATABASE_URL": s.database_url,
        "NEWSLETTER_BROKER_URL": redis_url,
        "NEWSLETTER_EMAIL_BACKEND": "smtp",
        "NEWSLETTER_SMTP_HOST": "127.0.0.1",
        "NEWSLETTER_SMTP_PORT": str(smtp_server.port),
        "NEWSLETTER_SMTP_TIMEOUT": "5",
        "NEWSLETTER_SECRET_KEY": "worker-secret-Zp4Lq9Xc2Vb7Nm3Kd8Rf5Tg",
        "NEWSLETTER_SMTP_SINK": "true",  # as in `cli` above
        "NEWSLETTER_FROM": "Melange News <digest@news.example>",
        "NEWSLETTER_PUBLIC_URL": "https://news.example",
        "NEWSLETTER_RETRY_BASE_SECONDS": "0.5",
        "NEWSLETTER_BATCH_SIZE": "25",
        # Four lanes a process, as before `auto`: the tests that kill a worker need rows
        # waiting for a lane, and `auto` gives a slow test relay a lane per row. `auto` in a
        # worker process: tests/test_lanes.py.
        "NEWSLETTER_SMTP_CONNECTIONS": "4",
        # Tests that start two workers would both ask for the default port; the one that
        # checks the exporter gives its worker a free port.
        "NEWSLETTER_METRICS_PORT": "0",
    }


@pytest.fixture
def start_worker(worker_env, tmp_path):
    from tests.support.worker import WorkerProcess

    started = []

    def start(name="w1", concurrency=2, **env):
        worker = WorkerProcess({**worker_env, **env}, tmp_path / f"{name}.log", name=name,
                               concurrency=concurrency).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        # Shown by pytest only when the test failed: what the worker was doing.
        print(f"--- last lines of worker {worker.name}'s log ---", *worker.output().splitlines()[-80:], sep="\n")


@pytest.fixture
def tick(worker_env):
    """One reconciler tick with the real clock, publishing to the test broker."""
    from worker.celery_app import create_app, publisher
    from worker.clock import utcnow
    from worker.delivery.schedule import reconcile
    from worker.settings import load_settings
    from worker.store.db import create_db_engine

    apps = {}

    def run(**env):
        settings = load_settings({**worker_env, **env})
        app = apps.setdefault(settings.broker_url, create_app(settings))
        engine = create_db_engine(settings.database_url)
        try:
            return reconcile(engine, settings, publisher(app), utcnow(), weekly=False)
        finally:
            engine.dispose()

    return run
