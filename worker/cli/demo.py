"""`newsletter demo`: the embedded default, end to end, with no services.

With the default settings it uses SQLite and the file outbox. With
NEWSLETTER_EMAIL_BACKEND=smtp (as docker compose sets it) it sends the same sample
week through the configured SMTP relay (compose: Mailpit), and only ever to the
bundled sample addresses, which are all at reserved example domains.
"""

from __future__ import annotations

import click
from pydantic import SecretStr

from worker import PROJECT_ROOT
from worker.cli.app import Context, cli, pass_ctx
from worker.errors import ConfigError, UsageError
from worker.readiness import secret_key_problem

EXAMPLES = PROJECT_ROOT / "examples"
DEMO_WEEK = "2025-W05"
# RFC 2606 / RFC 6761 names: mail to them never reaches a real person.
RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
RESERVED_SUFFIXES = (".example", ".test", ".invalid", ".localhost")
MAILPIT_UI = "http://localhost:8025"


def is_reserved_address(address: str) -> bool:
    domain = address.rpartition("@")[2].rstrip(".").casefold()
    return (domain in RESERVED_DOMAINS or domain == "localhost"
            or any(domain.endswith(suffix) for suffix in RESERVED_SUFFIXES)
            or any(domain.endswith("." + name) for name in RESERVED_DOMAINS))


@cli.command()
@pass_ctx
def demo(ctx: Context) -> None:
    """Load the sample stories and subscribers, send the sample week.

    Through the file outbox by default; through the SMTP relay when
    NEWSLETTER_EMAIL_BACKEND=smtp (docker compose: Mailpit), to the sample
    addresses only.
    """
    from sqlalchemy import make_url

    from worker.ingest import import_sources
    from worker.readers.subscribers import import_csv
    from worker.store.db import upgrade_schema

    settings = ctx.settings
    _check_backend(settings)
    click.echo(f"database: {make_url(settings.database_url).render_as_string(hide_password=True)}")
    upgrade_schema(ctx.raw_engine)
    if settings.email_backend == "smtp":
        _refuse_real_subscribers(ctx.engine)
    report = import_sources(ctx.engine, [str(EXAMPLES / "stories.json")])
    click.echo(f"stories: {report.added} added, {report.updated} updated, {report.unchanged} unchanged")
    subs = import_csv(ctx.engine, EXAMPLES / "subscribers.csv")
    click.echo(f"subscribers: {subs.added} added, {subs.updated} updated, {subs.unchanged} unchanged")
    problems = [str(r) for r in report.rejected] + [f"line {n}: {r}" for n, r in subs.rejected]
    for problem in problems:
        click.echo(f"rejected: {problem}", err=True)
    if problems:
        raise click.exceptions.Exit(1)
    code = _send_demo_week(ctx)
    if code:
        raise click.exceptions.Exit(code)


def _check_backend(settings) -> None:
    """Before anything is written: a backend the demo can use, and a real key for real SMTP."""
    if settings.email_backend == "smtp":
        # The throwaway demo key signs links that leave this machine only with the file backend.
        settings.require_secret_key()
        weak = secret_key_problem(settings)
        if weak is not None:
            raise ConfigError(f"setting NEWSLETTER_SECRET_KEY {weak}")


def _refuse_real_subscribers(engine) -> None:
    """Over SMTP the demo mails every active subscriber: only the sample ones may be there."""
    from sqlalchemy import select

    from worker.store.db import session_scope
    from worker.store.models import Subscriber

    with session_scope(engine) as session:
        emails = session.scalars(select(Subscriber.email).where(Subscriber.status == "active")).all()
    real = [e for e in emails if not is_reserved_address(e)]
    if real:
        raise UsageError(
            f"the demo sends over SMTP to every active subscriber, and this database has {len(real)} "
            "outside the reserved example domains: refusing (use a fresh database, or "
            "`newsletter send --week " + DEMO_WEEK + " --to ADDR` for a test copy)")


def _send_demo_week(ctx: Context) -> int:
    """Send the sample week inline through the configured backend, then write a preview."""
    from worker import editions
    from worker.cli.sending import deliver, plan_or_reuse, resolve_window
    from worker.preview import build_preview, write_preview

    settings = ctx.settings
    if settings.secret_key is None:
        # The demo is local only: a throwaway key, said out loud, never used for real mail.
        settings = settings.model_copy(update={"secret_key": SecretStr("demo-only-not-secret")})
        click.echo("NEWSLETTER_SECRET_KEY is not set: using a demo-only key")
    window, key, kind = resolve_window(settings, DEMO_WEEK, None, None)
    edition_id = None
    if editions.find(ctx.engine, key) is None:
        edition_id = plan_or_reuse(ctx.engine, settings, key=key, kind=kind, window=window, force=False,
                                   retry=False)
    else:
        _say_already_sent(ctx, settings, key)
    code = 0
    if edition_id is not None:
        code = deliver(ctx.engine, settings, edition_id, inline=True, wait=False)
    if settings.email_backend == "smtp":
        _say_where_smtp_went(ctx, settings, key, sent_now=edition_id is not None)
    else:
        emails = sorted(settings.outbox_dir.glob("*.eml"))
        click.echo(f"outbox: {len(emails)} .eml files in {settings.outbox_dir.resolve()}")
    preview = build_preview(ctx.engine, settings, window=window, regions=("RU", "UA"))
    paths = write_preview(preview, settings.preview_dir)
    click.echo(f"preview: {paths['html'].resolve()} (and digest.txt, digest.eml beside it)")
    click.echo("next: `newsletter status " + key + "`, `newsletter serve` for the web preview")
    return code


def _say_already_sent(ctx: Context, settings, key: str) -> None:
    """A second run: the sample week was sent by the first one and is not sent twice."""
    from worker import editions
    from worker.store.db import sqlite_path

    data = editions.status(ctx.engine, key)
    path = sqlite_path(settings.database_url)
    fresh = (f"delete {path} (and {settings.outbox_dir}) and run `newsletter demo` again" if path
             else "point NEWSLETTER_DATABASE_URL at an empty database and run `newsletter demo` again")
    click.echo(f"the demo already ran on this database: its sample week {key} is {data.state} "
               f"({data.counts['sent']} sent), so nothing was sent again. To see it afresh, {fresh}")


def _say_where_smtp_went(ctx: Context, settings, key: str, *, sent_now: bool) -> None:
    from worker import editions

    data = editions.status(ctx.engine, key)
    counts, open_rows = data.counts, data.open_rows
    relay = f"{settings.smtp_host}:{settings.smtp_port}"
    line = f"smtp: {key}: {counts['sent']} messages sent through {relay}"
    if not sent_now:
        line = "smtp: nothing sent now (the demo week exists); " + line[len("smtp: "):]
    if open_rows:
        line += f", {open_rows} not yet (a running worker's reconciler retries them)"
    click.echo(line + f"; look in that relay's inbox (docker compose: Mailpit, {MAILPIT_UI})")
