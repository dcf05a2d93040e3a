"""Engine, sessions and schema upgrades."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session

from worker.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"


# Spellings of PostgreSQL that SQLAlchemy does not take (Heroku, docker images and
# libpq print `postgres://`); psycopg 3 is the driver installed.
_POSTGRES_NAMES = ("postgres", "postgresql", "postgres+psycopg", "pgsql")


class MissingDatabase(ConfigError):
    """A SQLite file that is not there, asked for by a command that only uses a database."""


def parse_database_url(url: str) -> URL:
    """The URL as the engine will use it: `postgres://` and `postgresql://` mean psycopg 3."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"setting NEWSLETTER_DATABASE_URL: not a database URL: {url!r} "
            "(e.g. sqlite:///var/newsletter.db or postgresql://user@host/newsletter)") from None
    if parsed.drivername in _POSTGRES_NAMES:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def sqlite_path(url: str) -> Path | None:
    """The absolute path of a SQLite database file (a relative one is relative to the
    working directory), or None for an in-memory database or another kind of database."""
    parsed = parse_database_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:" \
            or parsed.database.startswith("file:"):
        return None
    return Path(parsed.database).absolute()


def describe_database(url: str) -> str:
    """The database in words, password hidden: the absolute file for SQLite."""
    path = sqlite_path(url)
    if path is not None:
        return f"SQLite {path}"
    return parse_database_url(url).render_as_string(hide_password=True)


def create_db_engine(url: str, *, pool_size: int = 5, create: bool = True) -> Engine:
    """An engine for `url`; SQLite files get their folder, WAL and a busy timeout.

    With create=False a SQLite file that does not exist is a MissingDatabase error, and
    nothing (no folder, no empty file) is made: commands that only read must not leave
    a `var/` behind in whatever directory they were run from.
    """
    parsed = parse_database_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None and not create and not path.exists():
            raise MissingDatabase(
                f"no database at {path} (NEWSLETTER_DATABASE_URL={parsed.render_as_string(hide_password=True)}"
                + (", relative to the working directory" if not Path(parsed.database).is_absolute() else "")
                + "): run `newsletter db upgrade` to create it, or set NEWSLETTER_DATABASE_URL")
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(parsed, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size)
    except NoSuchModuleError:
        raise ConfigError(f"setting NEWSLETTER_DATABASE_URL: unsupported database {parsed.drivername!r}: "
                          "use sqlite:///PATH or postgresql://USER@HOST/NAME") from None
    except Exception as exc:  # missing driver and the like
        raise ConfigError(f"setting NEWSLETTER_DATABASE_URL: {exc} "
                          "(supported: sqlite:///PATH or postgresql://USER@HOST/NAME)") from None


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets the web app read while a send writes; foreign keys are off by default.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        with session.begin():
            yield session


def _alembic_config(engine: Engine):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade_schema(engine: Engine, revision: str = "head", *,
                   notes: list[str] | None = None) -> tuple[str | None, str | None]:
    """Bring the schema to `revision`; safe to run any number of times.

    Returns (revision before, revision after). What a migration found in the data and
    left for the operator to decide (address keys that would collide) is appended to `notes`.
    """
    from alembic import command

    before = current_revision(engine)
    cfg = _alembic_config(engine)
    cfg.attributes["notes"] = notes if notes is not None else []
    command.upgrade(cfg, revision)
    return before, current_revision(engine)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    try:
        conn = engine.connect()
    except OperationalError as exc:
        # The first connection of every command and of the worker: a database that was
        # never created is one line saying how, not a traceback.
        if engine.url.get_backend_name() == "postgresql" and _MISSING_DATABASE.search(str(exc.orig)):
            raise MissingDatabase(_create_it(engine.url)) from None
        raise
    with conn:
        return MigrationContext.configure(conn).get_current_revision()


# libpq's words when connecting to a database that is not there (SQLSTATE 3D000 is not
# passed on for a failed connection; the server's messages are English unless lc_messages says).
_MISSING_DATABASE = re.compile(r'database "[^"]*" does not exist')


def _create_it(url: URL) -> str:
    owner = url.username or "newsletter"
    host = f" -h {url.host}" + (f" -p {url.port}" if url.port else "") if url.host else ""
    return (f"PostgreSQL database {url.database!r} does not exist ({url.render_as_string(hide_password=True)}): "
            f"create it with `createdb{host} -U {owner} {url.database}` (or, as a superuser, "
            f"CREATE DATABASE \"{url.database}\" OWNER \"{owner}\";), then run `newsletter db upgrade`")


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()
