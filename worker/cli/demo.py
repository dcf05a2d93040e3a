"""`newsletter demo`: the embedded default, end to end, with no services."""

from __future__ import annotations

import click

from worker import PROJECT_ROOT
from worker.cli.app import Context, cli, pass_ctx

EXAMPLES = PROJECT_ROOT / "examples"
DEMO_WEEK = "2025-W05"


@cli.command()
@pass_ctx
def demo(ctx: Context) -> None:
    """Load the sample stories and subscribers, send the sample week to the file outbox."""
    from worker.ingest import import_sources
    from worker.ingest.subscribers import import_csv
    from worker.store.db import upgrade_schema

    settings = ctx.settings
    click.echo(f"database: {settings.database_url}")
    upgrade_schema(ctx.raw_engine)
    report = import_sources(ctx.engine, [str(EXAMPLES / "stories.json")])
    click.echo(f"stories: {report.added} added, {report.updated} updated, {report.unchanged} unchanged")
    subs = import_csv(ctx.engine, EXAMPLES / "subscribers.csv")
    click.echo(f"subscribers: {subs.added} added, {subs.updated} updated, {subs.unchanged} unchanged")
    problems = [str(r) for r in report.rejected] + [f"line {n}: {r}" for n, r in subs.rejected]
    for problem in problems:
        click.echo(f"rejected: {problem}", err=True)
    if problems:
        raise click.exceptions.Exit(1)
    _send_demo_week(ctx)


def _send_demo_week(ctx: Context) -> None:
    """Send the sample week inline through the file backend, then write a preview."""
    import os

    from worker.cli.sending import deliver, plan_or_reuse, resolve_window
    from worker.preview import build_preview, write_preview

    settings = ctx.settings
    if settings.secret_key is None:
        # The demo is local only: a throwaway key, said out loud, never used for real mail.
        os.environ.setdefault("NEWSLETTER_SECRET_KEY", "demo-only-not-secret")
        from worker.settings import load_settings

        settings = load_settings()
        click.echo("NEWSLETTER_SECRET_KEY is not set: using a demo-only key")
    if settings.email_backend not in ("file", "console"):
        raise click.UsageError("the demo sends through the file backend; unset NEWSLETTER_EMAIL_BACKEND")
    window, key, kind = resolve_window(settings, DEMO_WEEK, None, None)
    edition_id = plan_or_reuse(ctx.engine, settings, key=key, kind=kind, window=window, force=False, retry=False)
    if edition_id is not None:
        deliver(ctx.engine, settings, edition_id, inline=True, wait=False)
    emails = sorted(settings.outbox_dir.glob("*.eml"))
    click.echo(f"outbox: {len(emails)} .eml files in {settings.outbox_dir.resolve()}")
    preview = build_preview(ctx.engine, settings, window=window, regions=("RU", "UA"))
    paths = write_preview(preview, settings.preview_dir)
    click.echo(f"preview: {paths['html'].resolve()} (and digest.txt, digest.eml beside it)")
    click.echo("next: `newsletter status " + key + "`, `newsletter serve` for the web preview")
