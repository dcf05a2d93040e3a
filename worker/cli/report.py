"""How `newsletter status` (and the end of a send) puts an edition into words."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import click

from worker.delivery.status import BOUNCE_ALARM, BOUNCE_WARN, EditionStatus
from worker.store.models import EditionState

if TYPE_CHECKING:  # the CLI starts without the delivery path; print_status is called after it ran
    from worker.editions import FullStatus


def print_status(full: FullStatus, *, tz: ZoneInfo | None = None) -> None:
    data, where = full.status, full.whereabouts
    click.echo(f"{data.key} ({data.label}): {data.state}" + (f" ({data.reason})" if data.reason else ""))
    if data.state is EditionState.HELD:
        click.echo(f"  {held_hint(data.key)}")
        if full.approval_sends is not None:
            click.echo(f"  approving it sends to {full.approval_sends} subscribers: its rows below are those of "
                       "the hold, and are planned again from the stories and subscribers stored at the approval")
    if data.note:
        click.echo(f"  note: {data.note}")
    if data.state is EditionState.PAUSED and data.resume_at:
        click.echo(f"  resumes by itself if the relay answers a probe at {data.resume_at.isoformat()}")
    click.echo(f"  {data.total} deliveries: " + ", ".join(f"{n} {s}" for s, n in data.counts.items()))
    nothing = nothing_sent(data)
    if nothing:
        click.echo(f"  {nothing}")
    if data.retry_scheduled:
        click.echo(f"  {data.retry_scheduled} failed rows have a retry scheduled")
    for reason, n in data.skip_reasons.items():
        click.echo(f"  skipped {reason}: {n}")
    for code, n in data.smtp_codes.items():
        click.echo(f"  smtp {code}: {n}")
    _print_whereabouts(where, tz=tz, now=full.at)
    final = data.counts["failed"] - data.retry_scheduled
    if final:
        click.echo(f"  {final} failed for good: `newsletter send --edition {data.key} --retry-failed` "
                   "tries them again")
    for row in data.unknown:
        click.echo(f"  unknown: delivery {row.delivery} {row.email}: {row.reason}")
    if data.unknown and data.unknown_more:
        click.echo(f"  ... and {data.unknown_more} more unknown rows")
    for line in resolution_lines(data):
        click.echo(f"  {line}")
    for line in late_lines(data):
        click.echo(f"  {line}")
    for line in opened_lines(data):
        click.echo(f"  {line}")


def opened_lines(data: EditionStatus) -> list[str]:
    """The stories readers opened most (NEWSLETTER_COUNT_CLICKS), counts only."""
    opens = data.opens
    if not opens.clicks and not opens.discounted:
        return []
    times = "1 time" if opens.clicks == 1 else f"{opens.clicks} times"
    fetches = "1 fetch" if opens.discounted == 1 else f"{opens.discounted} fetches"
    lines = [f"story links opened {times} (not counted: {fetches} by link scanners and previews); most opened:"]
    for n, story in enumerate(opens.stories, 1):
        regions = ", ".join(f"{code} {count}" for code, count in sorted(story.regions.items(), key=lambda kv: -kv[1]))
        title = story.title if story.title is not None else f"story {story.story_id} (deleted since)"
        lines.append(f"  {n:>2}. {story.clicks:>6}  {title}  ({regions})")
    return lines


def resolution_lines(data: EditionStatus) -> list[str]:
    """How the edition's unknown rows were decided, and the command for those still open."""
    lines = []
    resolved = data.resolved
    if resolved.get("sent") or resolved.get("resend"):
        lines.append(f"resolved unknown rows: {resolved['sent']} marked sent, {resolved['resend']} sent again "
                     f"(last by {resolved['last_by']} at {resolved['last_at'][:16].replace('T', ' ')} UTC)")
    unknown = data.counts["unknown"]
    if unknown:
        lines.append(f"{unknown} unknown {'row' if unknown == 1 else 'rows'} (the reader has zero or one copy) "
                     f"wait for a decision: `newsletter deliveries resolve {data.key} --sent|--resend "
                     "(ADDR... | --all)`")
    return lines


def late_lines(data: EditionStatus) -> list[str]:
    """Late bounces and complaints (docs/bounces.md), and a warning past the bulk senders'
    complaint limits."""
    late = data.late
    if not late:
        return []
    lines = _bounce_rate_lines(late.get("bounce_rate"))
    if not (late["permanent"] or late["transient"] or late["complaint"] or late["sender"] or late.get("review")):
        return lines
    rates = late["rates"]
    lines.insert(0, f"late reports over {late['accepted']} sent: bounced {late['permanent']} "
                 f"({rates['permanent']:.2%}), temporary failures {late['transient']} ({rates['transient']:.2%}), "
                 f"complaints {late['complaint']} ({rates['complaint']:.3%})")
    if late.get("reasons"):
        lines.insert(1, "  by reason: " + ", ".join(f"{reason} {n}" for reason, n in late["reasons"].items()))
    if late.get("review"):
        lines.append(f"WARNING: {late['review']} reports of ours could not be read: kept for review, "
                     "`newsletter bounces review` lists them to decide")
    if late["sender"]:
        lines.append(f"WARNING: {late['sender']} refused for our side after the relay accepted them (x.7.x: "
                     "policy, SPF, DKIM or DMARC; or our sender address), not counted against readers: "
                     "docs/bounces.md says what to check")
    if late["complaint_alert"] == "alarm":
        lines.append(f"ALARM: complaint rate {rates['complaint']:.3%} is at or over 0.3 %: Gmail and Yahoo "
                     "reject or junk bulk mail from senders this high; find out why readers complain")
    elif late["complaint_alert"] == "warn":
        lines.append(f"WARNING: complaint rate {rates['complaint']:.3%} is over 0.1 % (Gmail and Yahoo ask "
                     "bulk senders to stay below it; 0.3 % is their limit)")
    return lines


def _bounce_rate_lines(rate: dict | None) -> list[str]:
    if not rate or not rate["alert"]:
        return []
    level, limit = (("ALARM", f"at or over {BOUNCE_ALARM * 100:g} %") if rate["alert"] == "alarm"
                    else ("WARNING", f"over {BOUNCE_WARN * 100:g} %"))
    return [f"{level}: bounce rate {rate['rate']:.2%} is {limit} ({rate['at_rcpt']} refused at RCPT, "
            f"{rate['late']} bounced late, of {rate['tried']} tried): mailbox providers read a list that "
            "bounces this much as unkept; check how the addresses were collected"]


def held_hint(key: str) -> str:
    return (f"nothing is sent until `newsletter send --edition {key} --approve`; "
            f"`--discard` drops it (`newsletter preview --week ...` shows it)")


def nothing_sent(data: EditionStatus) -> str | None:
    """A plain sentence for an edition that has sent nothing and has nothing left to send."""
    if data.counts["sent"] or data.open_rows:
        return None
    if data.total == 0:
        return "nothing to send: there were no active subscribers when it was planned"
    no_stories = data.skip_reasons.get("no-stories", 0)
    if no_stories == data.total:
        return (f"nothing was sent: nobody had stories in their regions in {data.label} "
                f"(all {no_stories} subscribers skipped, no-stories)")
    return None


def _print_whereabouts(data: Mapping[str, Any], *, tz: ZoneInfo | None, now: datetime | None) -> None:
    def when(iso: str | None) -> str:
        return _when(iso, tz=tz, now=now)

    failures = data["failures"]
    for group in failures["groups"]:
        reply = group["reply"] or "(no reply recorded)"
        if group["final"]:
            tail = "final" + (f", after {group['attempts']} attempts" if group["state"] == "failed" else "")
        else:
            tail = f"retry {_between(group['retry_from'], group['retry_until'], tz=tz, now=now)}"
        click.echo(f"  {group['state']}: {group['count']} × {reply} ({tail})")
    if failures["other_rows"]:
        click.echo(f"  ... and {failures['other_rows']} more failed or bounced rows with other replies "
                   "(`--json` has the same groups)")
    for lease in data["leases"]:
        state = {"alive": "alive", "dead": "dead: no heartbeat within NEWSLETTER_LIVENESS_SECONDS",
                 "unknown": "unknown: no heartbeat on record"}[lease["status"]]
        sending = f", {lease['sending']} in an SMTP transaction" if lease["sending"] else ""
        until = lease["lease_until"]
        if lease["lease_expired"]:
            end = f"lease ended {when(until)}, free for the next hand-out"
        elif lease["status"] == "dead":
            end = f"lease until {when(until)}; the next live worker or reconciler tick frees its rows"
        elif lease["status"] == "unknown":
            end = f"lease until {when(until)}; nothing frees its rows before then"
        else:
            end = f"lease until {when(until)}"
        click.echo(f"  held by worker {lease['worker']} ({state}): {lease['rows']} rows{sending}; {end}")
    hour = data.get("awaiting_hour") or {"rows": 0}
    if hour["rows"]:
        later = "" if hour["next_rows"] == hour["rows"] else f"; the last at {when(hour['last_due'])}"
        click.echo(f"  {hour['rows']} rows wait for the send time in their reader's zone: the next "
                   f"{hour['next_rows']} at {when(hour['next_due'])}{later}")
    waiting = data["awaiting_broker"]
    if waiting["rows"]:
        again = _between(waiting["redispatch_from"], waiting["redispatch_until"], tz=tz, now=now)
        click.echo(f"  {waiting['rows']} rows handed to the broker, not yet taken by a worker; "
                   f"if none takes them, handed out again {again} (NEWSLETTER_REDISPATCH_SECONDS)")


def _when(iso: str | None, *, tz: ZoneInfo | None, now: datetime | None) -> str:
    if iso is None:
        return "?"
    moment = datetime.fromisoformat(iso)
    text = moment.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z") if tz else iso
    if now is None:
        return text
    seconds = int((moment - now).total_seconds())
    span = _span(abs(seconds))
    return f"{text}, {'in ' + span if seconds >= 0 else span + ' ago'}"


def _between(first: str | None, last: str | None, *, tz: ZoneInfo | None, now: datetime | None) -> str:
    """'at T, in 5 min', or for a spread 'between T1 and T2, in 5 to 9 min'."""
    if first == last or last is None:
        return f"at {_when(first, tz=tz, now=now)}"
    start, end = _when(first, tz=tz, now=None), _when(last, tz=tz, now=None)
    if start[:10] == end[:10]:
        end = end[11:]  # same day: the time is enough
    text = f"between {start} and {end}"
    if now is None:
        return text
    a, b = (int((datetime.fromisoformat(t) - now).total_seconds()) for t in (first, last))
    if a >= 0:
        return f"{text}, in {_span(a)} to {_span(b)}"
    return f"{text}, {_span(-a)} ago to " + (f"in {_span(b)}" if b >= 0 else f"{_span(-b)} ago")


def _span(seconds: int) -> str:
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
