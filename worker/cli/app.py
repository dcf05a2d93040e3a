"""The click group and the per-invocation context (settings and engine, built lazily)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import click
from sqlalchemy import Engine

from worker.errors import ConfigError
from worker.settings import Settings, load_settings


@dataclass
class Context:
    debug: bool = False
    _settings: Settings | None = field(default=None, repr=False)

    @cached_property
    def settings(self) -> Settings:
        return self._settings or load_settings()

    @cached_property
    def raw_engine(self) -> Engine:
        from worker.store.db import create_db_engine

        return create_db_engine(self.settings.database_url)

    @cached_property
    def engine(self) -> Engine:
        """An engine whose schema is known to be current."""
        from worker.store.db import current_revision, head_revision

        engine = self.raw_engine
        if current_revision(engine) != head_revision():
            raise ConfigError(
                "the database schema is missing or out of date: run `newsletter db upgrade`"
            )
        return engine


pass_ctx = click.make_pass_decorator(Context)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Weekly regional news digest: ingest, preview, send."""
    ctx.obj = ctx.obj if isinstance(ctx.obj, Context) else Context(debug=debug)
