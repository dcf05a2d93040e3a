"""The click group and the per-invocation context (settings and engine, built lazily)."""

from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import click
from sqlalchemy import Engine

from worker.cli.who import who
from worker.errors import ConfigError, UsageError
from worker.operators.actor import Actor, reset_actor, set_actor
from worker.settings import Settings, load_settings, unknown_env_vars


@dataclass
class Context:
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    @cached_property
    def settings(self) -> Settings:
        if self._settings is not None:
            return self._settings
        settings = load_settings()  # first: a near miss is an error, the one line said
        warn_unknown_env()
        return settings

    @cached_property
    def raw_engine(self) -> Engine:
        """An engine that may create the database: for `db upgrade` and `demo` only."""
        from worker.store.db import create_db_engine, sqlite_path

        path = sqlite_path(self.settings.database_url)
        new = path is not None and not path.exists()
        engine = create_db_engine(self.settings.database_url)
        if new:
            engine.connect().close()  # SQLite makes the file on the first connection
            # The default path is relative to the working directory: say where it went.
            click.echo(f"created new database at {path}")
        return engine

    @cached_property
    def engine(self) -> Engine:
        """An engine whose schema is known to be current. Never creates a database: a
        command that reads must not leave an empty `var/newsletter.db` wherever it ran."""
        from worker.store.db import create_db_engine, current_revision, describe_database, head_revision

        url = self.settings.database_url
        engine = self.__dict__.get("raw_engine") or create_db_engine(url, create=False)
        if current_revision(engine) != head_revision():
            raise ConfigError(
                f"the database schema is missing or out of date ({describe_database(url)}): "
                "run `newsletter db upgrade`"
            )
        return engine


def warn_unknown_env() -> None:
    """A misspelt NEWSLETTER_* variable would otherwise be ignored without a word."""
    for name, close in unknown_env_vars():
        if close is None:  # a near miss is an error, raised by load_settings
            click.echo(f"warning: {name} is not a setting and is ignored", err=True)


pass_ctx = click.make_pass_decorator(Context)


def _print_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        import worker

        click.echo(f"newsletter {worker.__version__}")
        ctx.exit(0)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks (also accepted after the command).")
@click.option("--version", "-V", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version and exit.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Weekly regional news digest: ingest, preview, send.

    Settings come from defaults, config/newsletter.toml (or NEWSLETTER_CONFIG) and
    NEWSLETTER_* variables; `newsletter config` shows them and where each came from.
    """
    ctx.obj = ctx.obj if isinstance(ctx.obj, Context) else Context(debug=debug)
    # Whatever this command changes for a reader or an edition names who ran it (worker/operators).
    acting = set_actor(Actor(who=f"cli ({who()})", via="cli"))
    ctx.call_on_close(lambda: reset_actor(acting))


def print_table(columns: list[str], rows: list[list[str]]) -> None:
    """Columns on a terminal; piped, every line whole (rich would cut it at 80 columns).
    Cells are data: no rich markup, emoji codes or highlighting in names and titles."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, box=None, pad_edge=False, header_style="bold")
    for row in rows:
        table.add_row(*row)
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 100_000
    Console(file=sys.stdout, width=width, soft_wrap=True, markup=False, emoji=False, highlight=False).print(table)


def require_readable(path: str | Path) -> None:
    """A file named on the command line that cannot be read is a usage error (exit 2),
    said the same way by every import, before any database is opened."""
    try:
        mode = Path(path).stat().st_mode
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise UsageError(f"cannot read {path}: Is a directory")
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot read {path}: Permission denied")


def region_option(text: str | None, option: str = "--region") -> str | None:
    """A region code given as an option, normalised ('ru' -> 'RU'), or a usage error."""
    from worker.regions import RegionError, normalise_region

    if text is None:
        return None
    try:
        return normalise_region(text)
    except RegionError as exc:
        raise UsageError(f"{option}: {exc}") from None
