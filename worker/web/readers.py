"""Readers' pages: sign up, confirm, manage regions and name, leave one region or all.

Rules (docs/readers.md has them for the news site's developers):

- Everything is plain HTML forms: no page needs JavaScript.
- GET never changes anything (mail scanners follow links); each change is a POST.
- Links carry signed tokens (worker/tokens.py), never an address or a name.
- POST /subscribe may come from the news site's pages: a form post from an allowed
  origin (ours, NEWSLETTER_SITE_URL's, NEWSLETTER_SUBSCRIBE_ORIGINS) or with no Origin at
  all (not a browser), and JSON with CORS for those origins only. Its answer is the same
  whether the address is new, pending, active or gone (no enumeration), and comes before
  any mail is sent (mailer.py). Rate limited per client and overall (ratelimit.py).
- Every other POST (confirm, manage, leave) must come from our own origin when the
  browser says where it comes from, and carries a signed form token (CSRF) bound to the
  subscriber and the form, valid for FORM_MAX_AGE.
- The one-click unsubscribe (app.py) is RFC 8058's and needs neither.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache

from flask import Flask, Response, jsonify, redirect, render_template, request
from sqlalchemy import Engine

from worker.readers.history import KEEP
from worker.readers.manage import LeaveOutcome, change_subscription, leave
from worker.readers.signup import (
    ConfirmOutcome,
    check_confirmation,
    confirm_subscription,
    expire_pending,
    release_confirmation,
    request_subscription,
)
from worker.readers.subscribers import (
    MAX_NAME,
    InvalidSubscriber,
    SubscriberInput,
    check_address,
    check_name,
    check_regions,
    check_timezone,
)
from worker.readers.zones import reader_zone
from worker.regions import RegionError, normalise_region, region_name
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import ChangeVia, EventKind, Subscriber, SubscriberStatus
from worker.tokens import (
    TokenProblem,
    check_form_token,
    form_token,
    link_opens,
    manage_token,
    read_confirm_token,
    read_manage_token,
)
from worker.web.crosssite import browser_origin, takes_other_sites
from worker.web.mailer import ConfirmationMailer
from worker.web.offered import offered_regions
from worker.web.public import public
from worker.web.ratelimit import PER_CLIENT, LimitsUnavailable, SubscribeLimiter, client_address
from worker.zones import MAX_ZONE, zone_choices

# A readers' form stays usable this long after the page was shown.
FORM_MAX_AGE = 6 * 3600
# Expired sign-ups are deleted by the sign-up endpoint, at most this often per process.
HOUSEKEEPING_SECONDS = 600
SENT_MESSAGE = ("Check your inbox: if the address can receive mail, a message with a confirmation link is on "
                "its way. Nothing is sent to you before you click it.")


@dataclass(frozen=True)
class Region:
    code: str
    name: str


def register_readers(app: Flask, settings: Settings, engine: Engine, *, mailer: ConfirmationMailer,
                     limiter: SubscribeLimiter) -> None:
    secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
    origins = settings.reader_origins
    own_origin = _origin(settings.public_url)
    region_pattern = _region_pattern(settings.region_url)
    housekeeping = {"due": 0.0}
    offered = offered_regions(engine, settings)

    def choices() -> tuple[Region, ...]:
        return region_choices(settings, offered())

    def not_offered(codes) -> str | None:
        """The refusal of regions this site does not send news about, or None."""
        missing = [code for code in codes if code not in offered()]
        if not missing:
            return None
        listed = ", ".join(f"{region.name} ({region.code})" for region in names(missing))
        return (f"We do not send news about {listed}: choose among the regions listed"
                if len(listed) < 200 else "We do not send news about some of these regions: choose among "
                                          "the regions listed")

    def names(codes) -> list[Region]:
        return [Region(code, region_name(code, settings.region_names)) for code in codes]

    def page(template: str, status: int = 200, **context) -> tuple[str, int]:
        return render_template(template, settings=settings, **context), status

    def problem(status: int, title: str, message: str, *, link: tuple[str, str] | None = None,
                headers: dict | None = None) -> Response:
        body = render_template("problem.html", settings=settings, title=title, message=message, link=link)
        return Response(body, status=status, mimetype="text/html", headers=headers or {})

    # Sign up

    @app.route("/subscribe", methods=["GET", "POST", "OPTIONS"], provide_automatic_options=False)
    @public
    @takes_other_sites  # the news site's pages: their origins are checked below
    def subscribe():
        if request.method == "OPTIONS":
            return _preflight()
        if request.method == "GET":
            wanted = [code for code in _codes_or_none(request.args.get("regions", "")) or () if code in offered()]
            return page("subscribe.html", form={"email": "", "name": "", "timezone": ""}, wanted=names(wanted),
                        choices=choices(), zones=zone_choices(), errors={})
        as_json = request.is_json
        origin = _request_origin()
        if origin is not None and origin not in origins:
            return _refuse(as_json, 403, "Sign-ups are accepted only from our own pages and the news site.")
        try:
            verdict = limiter.hit(client_address(request, settings.trusted_proxies))
        except LimitsUnavailable:
            return _refuse(as_json, 503, "Sign-up is unavailable for a moment: please try again in a few minutes.")
        if not verdict.allowed:
            minutes = -(-verdict.retry_after // 60)
            # Which budget, by its setting, for an operator trying the form by hand; never the
            # numbers. A client learns only what it could tell anyway: its own or everyone's.
            whose = "from your address" if verdict.setting == PER_CLIENT else "from everyone together"
            return _refuse(as_json, 429, f"Too many sign-ups just now: please try again in {minutes} "
                           f"minute{'s' if minutes != 1 else ''}. (If you run this site: the limit of sign-ups "
                           f"{whose} was reached; {verdict.setting} sets it.)",
                           {"Retry-After": str(verdict.retry_after)})
        if not secret:
            return _refuse(as_json, 503, "Sign-up is not available: the site is not fully set up yet.")
        fields, errors = _signup_fields(as_json)
        if errors:
            if as_json:
                return _cors(jsonify(error="; ".join(errors.values()), errors=errors), 400)
            form = {"email": str(fields.get("email") or "")[:400], "name": str(fields.get("name") or "")[:400],
                    "timezone": str(fields.get("timezone_text") or "")[:MAX_ZONE * 2]}
            return page("subscribe.html", 400, form=form, wanted=names(fields.get("regions") or ()),
                        choices=choices(), zones=zone_choices(), errors=errors)
        now = datetime.now(UTC)
        _housekeeping(now)
        item = SubscriberInput(fields["email"], fields["key"], fields["name"], fields["regions"],
                               fields["timezone"] or KEEP)
        due = request_subscription(engine, item, via=ChangeVia.FORM, now=now)
        if due is not None:
            _mail_within_limits(due, item.email_key, now)
        if as_json:
            return _cors(jsonify(status="check-your-inbox", message=SENT_MESSAGE), 202)
        return page("subscribe_sent.html", email=item.email, regions=names(item.regions), back=_back_link())

    def _mail_within_limits(due, email_key: str, now: datetime) -> None:
        """Mail the link unless the mailbox's or domain's limit is spent (address variants,
        user+1@, u.s.e.r@gmail.com, each pass the per-address hour); the answer is the same."""
        try:
            refused = limiter.mail_refused(email_key)
        except LimitsUnavailable:
            # No mail without a limit.
            release_confirmation(engine, due, reason="not sent: the rate-limit store did not answer", now=now)
            return
        if refused is None:
            mailer.submit(due)
        else:
            release_confirmation(engine, due, reason=f"not sent: the {refused} limit of confirmation mails "
                                 "is spent", now=now)

    def _signup_fields(as_json: bool) -> tuple[dict, dict[str, str]]:
        """The submitted fields, checked as imports check them; errors by field."""
        if as_json:
            data = _json_body()
            if not isinstance(data, dict):
                return {}, {"body": "the body must be a JSON object with email, name and regions"}
            raw = {"email": data.get("email"), "name": data.get("name"), "regions": data.get("regions"),
                   "timezone": data.get("timezone")}
        else:
            raw = {"email": request.form.get("email"), "name": request.form.get("name"),
                   "regions": ",".join(request.form.getlist("regions")), "timezone": request.form.get("timezone")}
        fields: dict = {}
        errors: dict[str, str] = {}
        email, name, regions = raw["email"], raw["name"], raw["regions"]
        try:
            if not isinstance(email, str):
                raise InvalidSubscriber("no email address")
            fields["email"], fields["key"] = check_address(email)
        except InvalidSubscriber as exc:
            fields["email"] = email if isinstance(email, str) else ""
            errors["email"] = _sentence(str(exc))
        try:
            if name is not None and not isinstance(name, str):
                raise InvalidSubscriber("the name must be text")
            fields["name"] = check_name(name)
        except InvalidSubscriber as exc:
            errors["name"] = _sentence(str(exc))
        if regions in (None, "", []):
            regions = _region_from_referrer(region_pattern) or ""
        try:
            if not isinstance(regions, str) and not (
                    isinstance(regions, list) and all(isinstance(code, str) for code in regions)):
                raise InvalidSubscriber("regions must be codes such as RU,UA")
            if not regions:
                raise InvalidSubscriber("choose at least one region")
            fields["regions"] = check_regions(regions)
        except InvalidSubscriber as exc:
            errors["regions"] = _sentence(str(exc))
        else:
            refused = not_offered(fields["regions"])
            if refused is not None:
                errors["regions"] = _sentence(refused)
                fields["regions"] = ()
        zone = raw["timezone"]
        fields["timezone_text"] = zone if isinstance(zone, str) else ""
        try:
            if zone is not None and not isinstance(zone, str):
                raise InvalidSubscriber("the time zone must be text such as Europe/Berlin")
            # Empty: none given (a new reader gets their region's zone, a known one keeps theirs).
            fields["timezone"] = check_timezone(zone)
        except InvalidSubscriber as exc:
            errors["timezone"] = _sentence(str(exc))
        return fields, errors

    def _housekeeping(now: datetime) -> None:
        if time.monotonic() >= housekeeping["due"]:
            housekeeping["due"] = time.monotonic() + HOUSEKEEPING_SECONDS
            expire_pending(engine, now=now, after=timedelta(days=settings.pending_expiry_days))

    def _preflight() -> Response:
        response = Response(status=204)
        origin = request.headers.get("Origin", "").lower()
        if origin in origins:
            response.headers.update({
                "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "POST",
                "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "86400",
            })
        response.headers["Vary"] = "Origin"
        return response

    def _cors(response: Response, status: int) -> Response:
        response.status_code = status
        origin = request.headers.get("Origin", "").lower()
        if origin in origins:
            response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        return response

    def _refuse(as_json: bool, status: int, message: str, headers: dict | None = None) -> Response:
        if as_json:
            response = _cors(jsonify(error=message), status)
            response.headers.update(headers or {})
            return response
        titles = {403: "Not from here", 429: "Please wait a moment", 503: "Not available right now"}
        return problem(status, titles.get(status, "Not accepted"), message, headers=headers)

    def _back_link() -> tuple[str, str] | None:
        """Back to the news page the form was on, when the browser says and it is the site's."""
        referrer = request.headers.get("Referer", "")
        if referrer and _origin(referrer) in origins and _origin(referrer) != own_origin:
            return referrer, "Back to the news"
        return (settings.site_url, "Back to the news") if settings.site_url else None

    # Confirm

    @app.get("/confirm/<token>")
    @public
    def confirm_page(token: str):
        found = _confirmation(token)
        if isinstance(found, Response):
            return found
        subscriber_id, nonce, state = found
        return page("confirm.html", done=False, token=token, regions=names(state.regions),
                    already_active=state.already_active, name=state.name, timezone=state.timezone,
                    csrf=form_token(secret, subscriber_id=subscriber_id, purpose="confirm"))

    @app.post("/confirm/<token>")
    @public
    def confirm(token: str):
        found = _confirmation(token)
        if isinstance(found, Response):
            return found
        subscriber_id, nonce, _state = found
        refused = _check_form(subscriber_id, "confirm", f"/confirm/{token}")
        if refused is not None:
            return refused
        done = confirm_subscription(engine, subscriber_id, nonce, now=datetime.now(UTC))
        if done.outcome is not ConfirmOutcome.CONFIRMED:
            return _used_link()
        return page("confirm.html", done=True, regions=names(done.regions),
                    manage_url=f"/manage/{manage_token(secret, subscriber_id, done.link_key)}")

    def _confirmation(token: str):
        """(subscriber id, nonce, state) of a live link, or the page that refuses it."""
        read = read_confirm_token(secret, token, max_age=settings.confirm_link_hours * 3600) if secret \
            else TokenProblem.INVALID
        if read is TokenProblem.EXPIRED:
            return problem(410, "This link has expired",
                           f"Confirmation links work for {settings.confirm_link_hours} hours. Sign up again "
                           "and we will send you a new one.", link=("/subscribe", "Sign up again"))
        if isinstance(read, TokenProblem):
            return problem(400, "This link is not valid",
                           "This confirmation link is not one of ours, or was cut short when it was copied. "
                           "Open it straight from the email, or sign up again.", link=("/subscribe", "Sign up"))
        state = check_confirmation(engine, read.subscriber_id, read.nonce)
        if state.outcome is ConfirmOutcome.GONE:
            return problem(410, "This link is no longer valid",
                           "The sign-up it confirms is no longer on record. Sign up again to get a new link.",
                           link=("/subscribe", "Sign up again"))
        if state.outcome is ConfirmOutcome.USED:
            return _used_link()
        return read.subscriber_id, read.nonce, state

    def _used_link() -> Response:
        return problem(410, "This link was already used",
                       "This confirmation link was used already, or a newer one was sent since: each link "
                       "works once. If you are subscribed, every newsletter has a link to manage your regions.")

    # Manage

    @app.get("/manage/<token>")
    @public
    def manage_page(token: str):
        found = _subscriber(token)
        if isinstance(found, Response):
            return found
        return _manage(token, found, saved=request.args.get("saved") == "1")

    def _manage(token: str, row: Subscriber, *, status: int = 200, errors: dict | None = None,
                saved: bool = False, name: str | None = None, timezone: str | None = None):
        current = names(row.region_list)
        followed = {r.code for r in current}
        return page("manage.html", status, token=token, subscriber=row, regions=current,
                    name=row.name if name is None else name, saved=saved, errors=errors or {},
                    timezone=row.timezone or "" if timezone is None else timezone, zones=zone_choices(),
                    send_zone=reader_zone(row.timezone, row.region_list, region_zones=settings.region_timezones,
                                          default=settings.timezone)[0],
                    choices=[r for r in choices() if r.code not in followed],
                    csrf=form_token(secret, subscriber_id=row.id, purpose="manage"), max_name=MAX_NAME,
                    active=row.status == SubscriberStatus.ACTIVE)

    @app.post("/manage/<token>")
    @public
    def manage(token: str):
        found = _subscriber(token)
        if isinstance(found, Response):
            return found
        row = found
        refused = _check_form(row.id, "manage", f"/manage/{token}")
        if refused is not None:
            return refused
        now = datetime.now(UTC)
        action = request.form.get("action", "save")
        if action == "resubscribe" and row.status != SubscriberStatus.ACTIVE:
            item = SubscriberInput(row.email, row.email_key, None, tuple(row.region_list))
            due = request_subscription(engine, item, via=ChangeVia.MANAGE_PAGE, now=now)
            if due is not None:
                mailer.submit(due)
            return page("subscribe_sent.html", email=row.email, regions=names(item.regions), back=None)
        if row.status != SubscriberStatus.ACTIVE:
            return _manage(token, row)
        if action == "leave":
            leave(engine, row.id, None, via=ChangeVia.MANAGE_PAGE, now=now)
            return page("left.html", region=None, remaining=[], manage_url=f"/manage/{token}")
        regions, name, errors = _edited_regions(row)
        zone = KEEP
        if "timezone" in request.form:  # a page from before the field keeps the zone
            try:
                zone = check_timezone(request.form["timezone"])
            except InvalidSubscriber as exc:
                errors["timezone"] = _sentence(str(exc))
        if errors:
            return _manage(token, row, status=400, errors=errors, name=request.form.get("name", "")[:MAX_NAME * 2],
                           timezone=request.form.get("timezone", "")[:MAX_ZONE * 2])
        changed = change_subscription(engine, row.id, regions=regions, name=name, via=ChangeVia.MANAGE_PAGE,
                                      now=now, timezone=zone)
        if EventKind.UNSUBSCRIBED in changed:
            return page("left.html", region=None, remaining=[], manage_url=f"/manage/{token}")
        return redirect(f"/manage/{token}?saved=1", code=303)

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
                errors["add"] = _sentence(str(exc))
            else:
                refused = not_offered(code for code in new if code not in current)
                if refused is not None:
                    errors["add"] = _sentence(refused)
                wanted.extend(new)
        regions: tuple[str, ...] = ()
        if wanted:
            try:
                regions = check_regions(wanted)
            except InvalidSubscriber as exc:
                errors["add"] = _sentence(str(exc))
        try:
            name = check_name(request.form.get("name"))
        except InvalidSubscriber as exc:
            name = None
            errors["name"] = _sentence(str(exc))
        return regions, name, errors

    # Leave one region

    @app.get("/manage/<token>/leave/<code>")
    @public
    def leave_page(token: str, code: str):
        found = _subscriber(token, code)
        if isinstance(found, Response):
            return found
        row, region = found
        rest = [r for r in names(row.region_list) if r.code != region.code]
        return page("leave.html", token=token, region=region, remaining=rest,
                    active=row.status == SubscriberStatus.ACTIVE, follows=region.code in row.region_list,
                    csrf=form_token(secret, subscriber_id=row.id, purpose="leave"))

    @app.post("/manage/<token>/leave/<code>")
    @public
    def leave_region(token: str, code: str):
        found = _subscriber(token, code)
        if isinstance(found, Response):
            return found
        row, region = found
        refused = _check_form(row.id, "leave", f"/manage/{token}/leave/{region.code}")
        if refused is not None:
            return refused
        result = leave(engine, row.id, region.code, via=ChangeVia.REGION_LINK, now=datetime.now(UTC))
        if result.outcome in (LeaveOutcome.NOT_FOLLOWED, LeaveOutcome.NOT_ACTIVE):
            return leave_page(token, region.code)
        return page("left.html", region=region, remaining=names(result.regions), manage_url=f"/manage/{token}")

    # Shared

    def _subscriber(token: str, code: str | None = None):
        """The subscriber a manage link names (and the region of a leave link), or the page that refuses it."""
        link = read_manage_token(secret, token) if secret else None
        if link is None:
            return problem(400, "This link is not valid",
                           "This link is not one of ours, or was cut short when it was copied. Open it "
                           "straight from one of your newsletters.")
        region = None
        if code is not None:
            try:
                region = names([normalise_region(code)])[0]
            except RegionError:
                return problem(404, "Nothing here", "That is not a region we send news about.")
            if region.code != code:
                return redirect(f"/manage/{token}/leave/{region.code}", code=308)
        if link.key is None:
            # Made before links carried the reader's key: it might name a row that took a
            # purged reader's id, so it opens nothing (the unsubscribe link still works).
            return problem(410, "This link is from an older newsletter",
                           "Please use the link in your latest newsletter. To stop the newsletter, use its "
                           "Unsubscribe link.")
        with session_scope(engine) as session:
            row = session.get(Subscriber, link.subscriber_id)
        if (row is None or row.status == SubscriberStatus.PENDING
                or not link_opens(link, key=row.link_key, legacy=False)):
            # Purged since, a row the link was not made for, or a sign-up nobody confirmed.
            return problem(410, "This link is no longer valid",
                           "We hold nothing for this link any more.", link=("/subscribe", "Sign up"))
        return (row, region) if code is not None else row

    def _check_form(subscriber_id: int, purpose: str, again: str) -> Response | None:
        """CSRF: a post from another site's page, or without this form's fresh token, is refused."""
        origin = _request_origin()
        if origin is not None and origin != own_origin:
            return problem(403, "Not from here", "This form can only be sent from our own page.",
                           link=(again, "Open the page again"))
        if not check_form_token(secret, request.form.get("csrf", ""), subscriber_id=subscriber_id,
                                purpose=purpose, max_age=FORM_MAX_AGE):
            return problem(400, "Please try again",
                           "This page was open for a long time, or the form did not come from it. Nothing was "
                           "changed: open the page again and repeat.", link=(again, "Open the page again"))
        return None


@lru_cache(maxsize=8)
def _sorted_regions(overrides: tuple[tuple[str, str], ...], codes: frozenset[str]) -> tuple[Region, ...]:
    names = dict(overrides)
    regions = [Region(code, region_name(code, names)) for code in codes]
    return tuple(sorted(regions, key=lambda r: r.name.casefold()))


def region_choices(settings: Settings, codes: frozenset[str]) -> tuple[Region, ...]:
    """The regions offered (worker/web/offered.py), by name, for the pages' region lists."""
    return _sorted_regions(tuple(sorted(settings.region_names.items())), codes)


def _json_body() -> object:
    """The JSON body (at most MAX_CONTENT_LENGTH), or None when it is not JSON. Deep
    nesting is a RecursionError in the json module, not a ValueError: both are a 400."""
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):
        return None


def _codes_or_none(text: str) -> tuple[str, ...] | None:
    try:
        return check_regions(text) if text else None
    except InvalidSubscriber:
        return None


def _request_origin() -> str | None:
    """Where the browser says the request comes from (crosssite.py); None: not a browser."""
    return browser_origin(request)


def _origin(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "null"
    return f"{scheme.lower()}://{rest.split('/', 1)[0].split('?', 1)[0].split('#', 1)[0].lower()}"


def _region_pattern(region_url: str) -> re.Pattern | None:
    if not region_url:
        return None
    return re.compile(re.escape(region_url).replace(re.escape("{region}"), "([A-Za-z]{2})") + r"(?:[/?#].*)?")


def _region_from_referrer(pattern: re.Pattern | None) -> str | None:
    """A sign-up from a region's page on the news site (NEWSLETTER_REGION_URL) follows that region."""
    referrer = request.headers.get("Referer", "")
    match = pattern.fullmatch(referrer) if pattern is not None and len(referrer) < 2048 else None
    return match[1] if match else None


def _sentence(reason: str) -> str:
    return reason[:1].upper() + reason[1:300] + ("" if reason.endswith(".") else ".")
