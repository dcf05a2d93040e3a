"""`newsletter check`: is this configuration ready for real mail?

Errors (exit 1) are what the worker and `send` refuse to start with over SMTP
(worker/readiness.py), plus what only a live look shows: the relay cannot be reached or
fails STARTTLS. Warnings (exit 0) are what real mail can go without, at a cost.
"""

from __future__ import annotations

from pathlib import Path

import click

from worker.cli.app import Context, cli, pass_ctx
from worker.cli.demo import is_reserved_address
from worker.readiness import Finding, configuration_findings
from worker.settings import Settings


@cli.command()
@pass_ctx
def check(ctx: Context) -> None:
    """Is this configuration ready for real mail? Errors exit 1, each naming its setting.

    Connects to the SMTP relay once (NEWSLETTER_SMTP_TIMEOUT) and hangs up; touches no
    database and sends nothing.
    """
    settings = ctx.settings
    found = [*_backend(settings), *configuration_findings(settings), *_dkim(settings), *_warnings(settings)]
    if settings.email_backend == "smtp":
        found.extend(_relay(settings))
    errors = [f for f in found if f.error]
    for finding in errors + [f for f in found if not f.error]:
        click.echo(f"{'error' if finding.error else 'warning'}: {finding}")
    warnings = len(found) - len(errors)
    if errors:
        click.echo(f"not ready for real mail: {len(errors)} error{'s' * (len(errors) != 1)}, "
                   f"{warnings} warning{'s' * (warnings != 1)}")
        raise click.exceptions.Exit(1)
    click.echo(f"ready for real mail ({warnings} warning{'s' * (warnings != 1)})")


def _backend(settings: Settings) -> list[Finding]:
    if settings.email_backend == "smtp":
        return []
    where = f"written to {settings.outbox_dir}" if settings.email_backend == "file" else "printed"
    return [Finding("NEWSLETTER_EMAIL_BACKEND", f"is {settings.email_backend}: mail is {where}, nobody "
                                                "receives it (smtp sends real mail)")]


def _dkim(settings: Settings) -> list[Finding]:
    parts = {"NEWSLETTER_DKIM_SELECTOR": settings.dkim_selector, "NEWSLETTER_DKIM_DOMAIN": settings.dkim_domain,
             "NEWSLETTER_DKIM_KEY_FILE": settings.dkim_key_file}
    missing = [name for name, value in parts.items() if not value]
    if len(missing) == len(parts):
        return [Finding("NEWSLETTER_DKIM_SELECTOR", "not set: mail goes out without a DKIM signature, and "
                                                    "large mailbox providers file unsigned bulk mail as spam "
                                                    "(docs/email.md)", error=False)]
    if missing:
        # Signing needs all three: with one missing, mail silently goes out unsigned.
        return [Finding(missing[0], "not set, while the other DKIM settings are: nothing is signed")]
    if not Path(settings.dkim_key_file).is_file():
        return [Finding("NEWSLETTER_DKIM_KEY_FILE", f"{settings.dkim_key_file} is not a readable file")]
    return []


def _warnings(settings: Settings) -> list[Finding]:
    found = []
    if not settings.bounce_address:
        found.append(Finding("NEWSLETTER_BOUNCE_ADDRESS", "not set: bounces go to the From address and are not "
                                                          "matched to readers (docs/bounces.md)", error=False))
    if not settings.regions:
        found.append(Finding("NEWSLETTER_REGIONS", "not set: sign-up offers the regions with stories in the "
                                                   "last 8 weeks (docs/readers.md)", error=False))
    address = settings.sender.addr_spec
    if is_reserved_address(address) and not address.casefold().endswith("localhost"):
        found.append(Finding("NEWSLETTER_FROM", f"{address} is at a reserved example domain: receivers refuse "
                                                "or junk its mail", error=False))
    return found


def _relay(settings: Settings) -> list[Finding]:
    """Connect, STARTTLS, log in and ask MAIL FROM as a send would: what fails here fails every send."""
    from worker.delivery.smtp import SmtpSender

    result = SmtpSender(settings).probe(settings.sender.addr_spec)
    if result is None:
        return []
    failure = result.summary
    setting = "NEWSLETTER_SMTP_SECURITY" if "TLS" in failure else (
        "NEWSLETTER_SMTP_USERNAME" if "authentication" in failure or "AUTH" in failure else "NEWSLETTER_SMTP_HOST")
    return [Finding(setting, f"the relay does not work: {failure}")]
