"""`newsletter health worker|beat`: liveness checks for container healthchecks.

Exit status 0 alive, 1 not (the reason on stderr), 2 bad usage or configuration.
What each check proves: worker/health.py.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.clock import utcnow


@cli.group()
def health() -> None:
    """Is this host's worker, or beat, alive? (exit 0 yes, 1 no)"""


@health.command("worker")
@click.option("--host", default=None, metavar="NAME",
              help="The worker's host name (default: this host, as a container's healthcheck runs it).")
@click.option("--max-age", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="Oldest heartbeat that counts (default: NEWSLETTER_LIVENESS_SECONDS).")
@pass_ctx
def worker(ctx: Context, host: str | None, max_age: float | None) -> None:
    """A worker process on this host renewed its heartbeat in the database lately."""
    from sqlalchemy.exc import SQLAlchemyError

    from worker.health import Health, check_worker

    limit = timedelta(seconds=max_age) if max_age else ctx.settings.liveness_timeout
    try:
        result = check_worker(ctx.engine, host=host or socket.gethostname(), now=utcnow(),
                              max_age=limit)
    except SQLAlchemyError as exc:
        result = Health(False, f"cannot read the workers' heartbeats: {type(exc).__name__}")
    _report(result)


@health.command("beat")
@click.option("--schedule", "-s", default=None, metavar="PATH",
              help="Beat's schedule file, as given to `celery beat -s` (default: var/celerybeat-schedule).")
@click.option("--max-age", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="How long beat may go without handing a task to the broker (default: 180).")
def beat(schedule: str | None, max_age: float | None) -> None:
    """Beat handed a task to the broker lately (it does so every minute)."""
    from worker.celery_app import BEAT_SCHEDULE_FILE
    from worker.health import BEAT_MAX_AGE, check_beat

    limit = timedelta(seconds=max_age) if max_age else BEAT_MAX_AGE
    _report(check_beat(schedule or BEAT_SCHEDULE_FILE, now=utcnow(), max_age=limit))


def _report(result) -> None:
    if result.ok:
        click.echo(f"alive: {result.message}")
        return
    click.echo(f"not alive: {result.message}", err=True)
    raise click.exceptions.Exit(1)
