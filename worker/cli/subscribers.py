"""`newsletter subscribers ...`"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import click
from sqlalchemy import func, select

from worker.cli.app import Context, cli, pass_ctx, print_table, region_option, require_readable
from worker.clock import utcnow
from worker.delivery.plan import active_region_sets
from worker.errors import UsageError
from worker.readers.zones import reader_zone
from worker.regions import region_name
from worker.store.db import session_scope
from worker.store.models import Subscriber, SubscriberStatus


@cli.group()
def subscribers() -> None:
    """Manage subscribers."""


@subscribers.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@pass_ctx
def import_(ctx: Context, file: Path) -> None:
    """Import a CSV with header email,name,regions and optionally timezone and language."""
    from worker.readers.subscribers import import_csv

    require_readable(file)
    report = import_csv(ctx.engine, file)
    click.echo(
        f"subscribers: {report.added} added, {report.updated} updated, {report.unchanged} unchanged, "
        f"{report.suppressed} kept unsubscribed, {len(report.rejected)} rejected"
    )
    for line, reason in report.rejected:
        click.echo(f"rejected: {file}: line {line}: {reason}", err=True)
    for line, reason in report.warnings:
        click.echo(f"warning: {file}: line {line}: {reason}", err=True)
    if report.rejected:
        raise click.exceptions.Exit(1)


@subscribers.command()
@click.argument("email")
@click.option("--regions", required=True, help="Codes in order, e.g. RU,UA.")
@click.option("--name", help="Name shown in the greeting and the To header.")
@click.option("--resubscribe", is_flag=True, help="Reactivate an unsubscribed or bounced address.")
@click.option("--timezone", help="IANA zone the weekly send time is read in, e.g. Europe/Berlin; "
              "'' for the first region's zone. Not given: unchanged.")
@click.option("--language", help="The language of their mail (en, ru, uk; a tag such as ru-RU is read as ru); "
              "'' for NEWSLETTER_LANGUAGE. Not given: unchanged.")
@pass_ctx
def add(ctx: Context, email: str, regions: str, name: str | None, resubscribe: bool, timezone: str | None,
        language: str | None) -> None:
    """Add or update one subscriber."""
    from worker.readers.history import KEEP
    from worker.readers.subscribers import InvalidSubscriber, add_subscriber, make_input

    try:
        item = make_input(email, name, regions, KEEP if timezone is None else timezone,
                          KEEP if language is None else language)
    except InvalidSubscriber as exc:
        raise UsageError(str(exc)) from None
    outcome = add_subscriber(ctx.engine, item, resubscribe=resubscribe)
    click.echo(f"{item.email}: {outcome} ({' '.join(item.regions)})")


@subscribers.command()
@click.argument("email")
@click.option("--purge", is_flag=True,
              help="Delete the record, its history and its ledger rows instead of keeping it as unsubscribed.")
@pass_ctx
def remove(ctx: Context, email: str, purge: bool) -> None:
    """Unsubscribe an address (kept as a suppression), or --purge it entirely."""
    from worker.readers.subscribers import InvalidSubscriber, purge_subscriber, set_status

    try:
        if purge:
            found = purge_subscriber(ctx.engine, email)
        else:
            found = set_status(ctx.engine, email, SubscriberStatus.UNSUBSCRIBED) is not None
    except InvalidSubscriber as exc:
        raise UsageError(str(exc)) from None
    if not found:
        click.echo(f"error: no subscriber {email.strip()!r}", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"{email.strip()}: {'purged' if purge else 'unsubscribed'}")


@subscribers.command("list")
@click.option("--status", type=click.Choice(["pending", "active", "unsubscribed", "bounced", "complained"]))
@click.option("--region", help="Only those who follow this region, e.g. RU.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def list_(ctx: Context, status: str | None, region: str | None, as_json: bool) -> None:
    """List subscribers (`subscribers regions` counts them per region)."""
    code = region_option(region)
    query = select(Subscriber).order_by(Subscriber.id)
    if status:
        query = query.where(Subscriber.status == status)
    if code:
        # Regions are one text value ("RU UA"); padded with spaces, a code matches whole.
        query = query.where((" " + Subscriber.regions + " ").like(f"% {code} %"))
    with session_scope(ctx.engine) as session:
        rows = [
            {"email": s.email, "name": s.name or "", "regions": s.region_list, "status": s.status}
            for s in session.scalars(query)
        ]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    print_table(["email", "name", "regions", "status"],
                [[row["email"], row["name"], " ".join(row["regions"]), row["status"]] for row in rows])
    click.echo(f"{len(rows)} subscribers")


@subscribers.command("regions")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@pass_ctx
def regions_(ctx: Context, as_json: bool) -> None:
    """Active subscribers per region: code, display name, how many follow it."""
    counts = _active_per_region(ctx)
    rows = [{"region": code, "name": region_name(code, ctx.settings.region_names), "active": n}
            for code, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if as_json:
        for row in rows:
            click.echo(json.dumps(row, ensure_ascii=False))
        return
    print_table(["region", "name", "active"], [[r["region"], r["name"], str(r["active"])] for r in rows])
    click.echo(f"{len(rows)} regions followed by {_active_total(ctx)} active subscribers")


def _active_per_region(ctx: Context) -> dict[str, int]:
    """Counted per region set in the database, then per region here: there are few sets."""
    with session_scope(ctx.engine) as session:
        sets = active_region_sets(session)
    counts: Counter[str] = Counter()
    for regions, n in sets:
        for code in regions.split():
            counts[code] += n
    return dict(counts)


def _active_total(ctx: Context) -> int:
    with session_scope(ctx.engine) as session:
        return session.scalar(select(func.count()).select_from(Subscriber)
                              .where(Subscriber.status == SubscriberStatus.ACTIVE.value)) or 0


@subscribers.command()
@click.argument("email")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.option("--deliveries", "limit", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many of the newest editions to list.")
@pass_ctx
def show(ctx: Context, email: str, as_json: bool, limit: int) -> None:
    """One reader: status, regions, history (when and how each change came) and recent editions."""
    record = _record(ctx, email, deliveries=limit)
    if as_json:
        click.echo(json.dumps(record, ensure_ascii=False, indent=2))
        return
    status = record["status"] + (f" since {_short(record['status_changed_at'])}" if record["status_changed_at"] else "")
    click.echo(f"{record['email']}")
    click.echo(f"  name:     {record['name'] or '-'}")
    click.echo(f"  status:   {status}")
    click.echo(f"  regions:  {' '.join(record['regions'])}")
    zone = record["send_zone"]
    click.echo(f"  zone:     {record['timezone'] or '-'}"
               + ("" if zone["from"] == "own" else f" (sent by {zone['zone']}, "
                  + ("the first region's zone)" if zone["from"] == "region" else "NEWSLETTER_TIMEZONE)")))
    click.echo(f"  language: {record['language'] or '-'}")
    click.echo(f"  added:    {_short(record['created_at'])}")
    confirmation = record["confirmation"]
    if confirmation:
        state = "waiting" if confirmation["live"] else "not live"
        click.echo(f"  confirmation link: mailed {_short(confirmation['mailed_at'])} for "
                   f"{' '.join(confirmation['regions'])} ({state})")
    click.echo("history:")
    print_table(["when", "what", "how", "by", "status", "regions", "note"],
                [[_short(e["at"]), e["kind"], e["via"], e["by"] or "", e["status"], " ".join(e["regions"]),
                  e["note"] or ""] for e in record["history"]] or [["-", "no change recorded", "", "", "", "", ""]])
    if record.get("late_reports"):
        click.echo("late reports (after the relay accepted the message):")
        print_table(["when", "edition", "kind", "reason", "code"],
                    [[_short(r["at"]), r["edition"] or "-", r["kind"], r["reason"] or "-", r["code"] or "-"]
                     for r in record["late_reports"]])
    click.echo(f"editions (newest {limit}):")
    print_table(["edition", "planned", "regions", "state", "reason or reply", "sent"],
                [[d["edition"], _short(d["planned_at"]), " ".join(d["regions"]), d["state"],
                  d["skip_reason"] or (d["last_reply"] or "")[:80], _short(d["sent_at"])]
                 for d in record["deliveries"]] or [["-", "in no edition yet", "", "", "", ""]])


@subscribers.command()
@click.argument("email")
@pass_ctx
def export(ctx: Context, email: str) -> None:
    """Everything held about one address, as JSON (a data-access request)."""
    record = _record(ctx, email, deliveries=None)
    click.echo(json.dumps({
        **record,
        "also": ("Rate-limit counters (Redis) hold client IP addresses for at most an hour and no address. "
                 "The file backend's outbox, if used, holds copies of the messages sent."),
    }, ensure_ascii=False, indent=2))


@subscribers.command()
@pass_ctx
def expire(ctx: Context) -> None:
    """Delete sign-ups nobody confirmed within NEWSLETTER_PENDING_EXPIRY_DAYS (the web app also does it)."""
    from datetime import timedelta

    from worker.readers.signup import expire_pending

    count = expire_pending(ctx.engine, now=utcnow(), after=timedelta(days=ctx.settings.pending_expiry_days))
    click.echo(f"{count} unconfirmed sign-ups older than {ctx.settings.pending_expiry_days} days deleted")


def _record(ctx: Context, email: str, *, deliveries: int | None) -> dict:
    from worker.readers.history import subscriber_record
    from worker.readers.subscribers import InvalidSubscriber, check_address

    try:
        _, key = check_address(email)
    except InvalidSubscriber as exc:
        raise UsageError(str(exc)) from None
    record = subscriber_record(ctx.engine, key, deliveries=deliveries)
    if record is None:
        click.echo(f"error: no subscriber {email.strip()!r}", err=True)
        raise click.exceptions.Exit(1)
    with session_scope(ctx.engine) as session:
        stored = session.scalar(select(Subscriber.timezone).where(Subscriber.email_key == key))
    zone, source = reader_zone(stored, record["regions"], region_zones=ctx.settings.region_timezones,
                               default=ctx.settings.timezone)
    record["timezone"] = stored
    record["send_zone"] = {"zone": zone, "from": source}
    return record


def _short(moment: str | None) -> str:
    """'2025-02-03T07:00:12+00:00' -> '2025-02-03 07:00 UTC'."""
    if not moment:
        return "-"
    return moment[:16].replace("T", " ") + (" UTC" if moment.endswith("+00:00") else "")
