"""A reader's own page (/manage/<token>: regions, their order, name, time zone; leave or
come back) and the link that leaves one region (/manage/<token>/leave/<code>). The
rules are in readers.py."""

from __future__ import annotations

from flask import Blueprint, Response, redirect, request

from worker.clock import utcnow
from worker.i18n import NATIVE_NAMES
from worker.readers.history import KEEP
from worker.readers.manage import LeaveOutcome, change_subscription, leave
from worker.readers.signup import request_subscription
from worker.readers.subscribers import (
    MAX_NAME,
    InvalidSubscriber,
    SubscriberInput,
    check_language,
    check_name,
    check_regions,
    check_timezone,
)
from worker.readers.zones import reader_zone
from worker.regions import RegionError, normalise_region
from worker.store.db import session_scope
from worker.store.models import ChangeVia, EventKind, Subscriber, SubscriberStatus
from worker.tokens import form_token, link_opens, read_manage_token
from worker.web.readers import check_form, choices, names, not_offered, sentence
from worker.web.shared import _, page, problem, public, speak, web
from worker.zones import MAX_ZONE, zone_choices

bp = Blueprint("manage", __name__)


@bp.get("/manage/<token>")
@public
def manage_page(token: str):
    found = _subscriber(token)
    if isinstance(found, Response):
        return found
    return _manage(token, found, saved=request.args.get("saved") == "1")


@bp.post("/manage/<token>")
@public
def manage(token: str):
    found = _subscriber(token)
    if isinstance(found, Response):
        return found
    row = found
    refused = check_form(row.id, "manage", f"/manage/{token}")
    if refused is not None:
        return refused
    engine, now = web().engine, utcnow()
    action = request.form.get("action", "save")
    if action == "resubscribe" and row.status != SubscriberStatus.ACTIVE:
        item = SubscriberInput(row.email, row.email_key, None, tuple(row.region_list))
        due = request_subscription(engine, item, via=ChangeVia.MANAGE_PAGE, now=now)
        if due is not None:
            web().mailer.submit(due)
        return page("subscribe_sent.html", email=row.email, regions=names(item.regions), back=None)
    if row.status != SubscriberStatus.ACTIVE:
        return _manage(token, row)
    if action == "leave":
        leave(engine, row.id, None, via=ChangeVia.MANAGE_PAGE, now=now)
        return page("left.html", region=None, remaining=[], manage_url=f"/manage/{token}")
    regions, name, errors = _edited_regions(row)
    zone = spoken = KEEP
    if "timezone" in request.form:  # a page from before the field keeps the zone
        try:
            zone = check_timezone(request.form["timezone"])
        except InvalidSubscriber as exc:
            errors["timezone"] = sentence(str(exc))
    if "language" in request.form:
        try:
            spoken = check_language(request.form["language"])
        except InvalidSubscriber as exc:
            errors["language"] = sentence(str(exc))
    if errors:
        return _manage(token, row, status=400, errors=errors, name=request.form.get("name", "")[:MAX_NAME * 2],
                       timezone=request.form.get("timezone", "")[:MAX_ZONE * 2])
    changed = change_subscription(engine, row.id, regions=regions, name=name, via=ChangeVia.MANAGE_PAGE,
                                  now=now, timezone=zone, language=spoken)
    if EventKind.UNSUBSCRIBED in changed:
        return page("left.html", region=None, remaining=[], manage_url=f"/manage/{token}")
    return redirect(f"/manage/{token}?saved=1", code=303)


@bp.get("/manage/<token>/leave/<code>")
@public
def leave_page(token: str, code: str):
    found = _subscriber(token, code)
    if isinstance(found, Response):
        return found
    row, region = found
    rest = [r for r in names(row.region_list) if r.code != region.code]
    return page("leave.html", token=token, region=region, remaining=rest,
                active=row.status == SubscriberStatus.ACTIVE, follows=region.code in row.region_list,
                csrf=form_token(web().secret, subscriber_id=row.id, purpose="leave"))


@bp.post("/manage/<token>/leave/<code>")
@public
def leave_region(token: str, code: str):
    found = _subscriber(token, code)
    if isinstance(found, Response):
        return found
    row, region = found
    refused = check_form(row.id, "leave", f"/manage/{token}/leave/{region.code}")
    if refused is not None:
        return refused
    result = leave(web().engine, row.id, region.code, via=ChangeVia.REGION_LINK, now=utcnow())
    if result.outcome in (LeaveOutcome.NOT_FOLLOWED, LeaveOutcome.NOT_ACTIVE):
        return leave_page(token, region.code)
    return page("left.html", region=region, remaining=names(result.regions), manage_url=f"/manage/{token}")


def _manage(token: str, row: Subscriber, *, status: int = 200, errors: dict | None = None,
            saved: bool = False, name: str | None = None, timezone: str | None = None):
    settings = web().settings
    current = names(row.region_list)
    followed = {r.code for r in current}
    return page("manage.html", status, token=token, subscriber=row, regions=current,
                name=row.name if name is None else name, saved=saved, errors=errors or {},
                timezone=row.timezone or "" if timezone is None else timezone, zones=zone_choices(),
                send_zone=reader_zone(row.timezone, row.region_list, region_zones=settings.region_timezones,
                                      default=settings.timezone)[0],
                choices=[r for r in choices() if r.code not in followed],
                csrf=form_token(web().secret, subscriber_id=row.id, purpose="manage"), max_name=MAX_NAME,
                active=row.status == SubscriberStatus.ACTIVE, languages=NATIVE_NAMES,
                reader_language=row.language or settings.language)


def _edited_regions(row: Subscriber) -> tuple[tuple[str, ...], str | None, dict[str, str]]:
    """The regions and name the manage form asks for: the order shown (or the stored
    one, if the page was stale), one region moved, the ticked ones removed, one added."""
    errors: dict[str, str] = {}
    current = row.region_list
    order = request.form.getlist("order")
    if sorted(order) != sorted(current):
        order = list(current)
    for key, step in (("up", -1), ("down", 1)):
        code = request.form.get(key)
        if code in order:
            at = order.index(code)
            other = at + step
            if 0 <= other < len(order):
                order[at], order[other] = order[other], order[at]
    removed = set(request.form.getlist("remove"))
    wanted = [code for code in order if code not in removed]
    added = request.form.get("add", "").strip()
    if added:
        try:
            new = [code for code in check_regions(added) if code not in wanted]
        except InvalidSubscriber as exc:
            errors["add"] = sentence(str(exc))
        else:
            refused = not_offered(code for code in new if code not in current)
            if refused is not None:
                errors["add"] = sentence(refused)
            wanted.extend(new)
    regions: tuple[str, ...] = ()
    if wanted:
        try:
            regions = check_regions(wanted)
        except InvalidSubscriber as exc:
            errors["add"] = sentence(str(exc))
    try:
        name = check_name(request.form.get("name"))
    except InvalidSubscriber as exc:
        name = None
        errors["name"] = sentence(str(exc))
    return regions, name, errors


def _subscriber(token: str, code: str | None = None):
    """The subscriber a manage link names (and the region of a leave link), or the page that refuses it."""
    secret = web().secret
    link = read_manage_token(secret, token) if secret else None
    if link is None:
        return problem(400, _("This link is not valid"),
                       _("This link is not one of ours, or was cut short when it was copied. Open it "
                         "straight from one of your newsletters."))
    region = None
    if code is not None:
        try:
            region = normalise_region(code)
        except RegionError:
            return problem(404, _("Nothing here"), _("That is not a region we send news about."))
        if region != code:
            return redirect(f"/manage/{token}/leave/{region}", code=308)
    if link.key is None:
        # Made before links carried the reader's key: it might name a row that took a
        # purged reader's id, so it opens nothing (the unsubscribe link still works).
        return problem(410, _("This link is from an older newsletter"),
                       _("Please use the link in your latest newsletter. To stop the newsletter, use its "
                         "Unsubscribe link."))
    with session_scope(web().engine) as session:
        row = session.get(Subscriber, link.subscriber_id)
    if row is not None:
        speak(row.language)
    if (row is None or row.status == SubscriberStatus.PENDING
            or not link_opens(link, key=row.link_key, legacy=False)):
        # Purged since, a row the link was not made for, or a sign-up nobody confirmed.
        return problem(410, _("This link is no longer valid"),
                       _("We hold nothing for this link any more."), link=("/subscribe", _("Sign up")))
    # Named in the reader's language, now that it is known.
    return (row, names([region])[0]) if code is not None else row
