"""Engine, sessions and schema upgrades."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session

from worker.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"  # alembic's default name; migrations/env.py keeps it


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


# A process stopped (SIGSTOP, a frozen VM, a debugger) in the middle of a transaction keeps
# its row locks, and the workers that would take its rows over wait on them, heartbeats
# included: PostgreSQL ends such a session after this long idle in its transaction, so
# recovery goes on. No transaction of ours waits on anything but the database (the claim
# commits before the SMTP conversation; the export reads a chunk per connection).
IDLE_IN_TRANSACTION_MS = 60_000


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
        options = f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
        return create_engine(parsed, pool_pre_ping=True, pool_size=pool_size, max_overflow=pool_size,
                             connect_args={"options": options})
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
    """The revision the database is at (None: never upgraded). Read with one query, not
    through alembic: every command and the worker's main process ask it at start, and
    alembic is 10 MB of a process that never migrates (tests/test_store.py holds it equal
    to alembic's answer). A branched history, which ours never is, gives its heads joined."""
    try:
        conn = engine.connect()
    except OperationalError as exc:
        # The first connection of every command and of the worker: a database that was
        # never created is one line saying how, not a traceback.
        if engine.url.get_backend_name() == "postgresql" and _MISSING_DATABASE.search(str(exc.orig)):
            raise MissingDatabase(_create_it(engine.url)) from None
        raise
    with conn:
        # alembic's own test: the version table in the connection's default schema.
        if not inspect(conn).has_table(VERSION_TABLE):
            return None
        heads = sorted(conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars())
    return " ".join(heads) or None


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
    """The newest revision of this code's migrations. Read from the revision files' text
    (their `revision` and `down_revision` lines), not by importing them through alembic,
    for the reason current_revision gives; alembic decides when that text is not one
    straight line of revisions."""
    revisions: dict[str, tuple[str, ...]] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        found = _revision_of(path)
        if found is None:
            return _alembic_head()
        revisions[found[0]] = found[1]
    below = {down for downs in revisions.values() for down in downs}
    heads = [revision for revision in revisions if revision not in below]
    return heads[0] if len(heads) == 1 else _alembic_head()


def _revision_of(path: Path) -> tuple[str, tuple[str, ...]] | None:
    """(revision, down revisions) as the file assigns them at its top level, when both are
    plain literals; None otherwise."""
    values = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
                    try:
                        values[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        return None
    revision, down = values.get("revision"), values.get("down_revision")
    if not isinstance(revision, str):
        return None
    downs = () if down is None else (down,) if isinstance(down, str) else tuple(down)
    return revision, downs


def _alembic_head() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config(None)).get_current_head()


def upsert_insert(engine: Engine):
    """INSERT with ON CONFLICT for this engine's dialect (PostgreSQL's or SQLite's)."""
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
