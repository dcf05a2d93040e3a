"""`newsletter` command line.

Exit status: 0 done, 1 something failed or was rejected, 2 bad usage or configuration.

The commands import what they use inside their own function, on purpose: `newsletter
--help` or `--version` then starts in about a third of a second instead of loading
SQLAlchemy, Celery, Flask and premailer first (more than twice as long, measured).
"""

from __future__ import annotations

import os
import sys

import click

# Importing the command modules registers their commands on `cli`.
from worker.cli import bounces as _bounces  # noqa: F401,E402
from worker.cli import check as _check  # noqa: F401,E402
from worker.cli import config as _config  # noqa: F401,E402
from worker.cli import db as _db  # noqa: F401,E402
from worker.cli import deliveries as _deliveries  # noqa: F401,E402
from worker.cli import demo as _demo  # noqa: F401,E402
from worker.cli import health as _health  # noqa: F401,E402
from worker.cli import operators as _operators  # noqa: F401,E402
from worker.cli import preview as _preview  # noqa: F401,E402
from worker.cli import send as _send  # noqa: F401,E402
from worker.cli import sources as _sources  # noqa: F401,E402
from worker.cli import stories as _stories  # noqa: F401,E402
from worker.cli import subscribers as _subscribers  # noqa: F401,E402
from worker.cli.app import Context, cli
from worker.errors import NewsletterError

__all__ = ["Context", "cli", "main"]


def main(argv: list[str] | None = None) -> None:
    args, debug = _hoist_debug(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args=args, prog_name="newsletter", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2 if exc.exit_code == 2 else exc.exit_code)
    except NewsletterError as exc:
        if debug:
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:  # one line for the user; --debug shows the traceback
        if debug:
            raise
        click.echo(f"error: {describe_exception(exc)} (run with --debug for details)", err=True)
        sys.exit(2 if _is_connection_error(exc) else 1)
    sys.exit(code or 0)


def _hoist_debug(args: list[str]) -> tuple[list[str], bool]:
    """`--debug` is the group's option, but people type it after the command
    (`newsletter status --debug`): take it from anywhere before a `--`, and from
    NEWSLETTER_DEBUG=1, and give it to the group."""
    end = args.index("--") if "--" in args else len(args)
    debug = "--debug" in args[:end] or os.environ.get("NEWSLETTER_DEBUG", "").lower() in ("1", "true", "yes")
    rest = [a for a in args[:end] if a != "--debug"] + list(args[end:])
    return (["--debug", *rest] if debug else rest), debug


def describe_exception(exc: BaseException) -> str:
    from sqlalchemy.exc import DBAPIError

    if isinstance(exc, DBAPIError):
        first = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        return f"database error: {first}"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _is_connection_error(exc: BaseException) -> bool:
    from sqlalchemy.exc import OperationalError

    return isinstance(exc, OperationalError | ConnectionError)
