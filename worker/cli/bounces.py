"""`newsletter bounces process`: read bounces and complaints (docs/bounces.md)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.errors import UsageError


@cli.group()
def bounces() -> None:
    """Bounces and complaints heard after the relay accepted a message."""


@bounces.command("process")
@click.option("--maildir", type=click.Path(path_type=Path), help="Read this Maildir (processed mail is flagged seen).")
@click.option("--mbox", type=click.Path(path_type=Path), help="Read this mbox file (never changed).")
@pass_ctx
def process(ctx: Context, maildir: Path | None, mbox: Path | None) -> None:
    """Read DSNs and complaints; without an option, NEWSLETTER_BOUNCE_MAILBOX."""
    from worker.bounces.mailboxes import process_configured, process_maildir, process_mbox

    if maildir and mbox:
        raise UsageError("give --maildir or --mbox, not both")
    now = datetime.now(UTC)
    if maildir:
        if not maildir.is_dir():
            raise UsageError(f"cannot read {maildir}: not a folder")
        summary = process_maildir(ctx.engine, ctx.settings, maildir, now=now)
    elif mbox:
        if not mbox.is_file():
            raise UsageError(f"cannot read {mbox}: not a file")
        summary = process_mbox(ctx.engine, ctx.settings, mbox, now=now)
    else:
        summary = process_configured(ctx.engine, ctx.settings, now=now)
        if summary is None:
            raise UsageError("no mailbox: set NEWSLETTER_BOUNCE_MAILBOX (imaps://user:password@host/INBOX) "
                             "or give --maildir DIR or --mbox FILE")
    click.echo(summary.describe())
    for reason, count in sorted(summary.ignored.items()):
        click.echo(f"  ignored {count}: {reason}")
    for kept in summary.kept:
        click.echo(f"  kept: {kept}", err=True)
    if summary.kept:
        raise SystemExit(1)
