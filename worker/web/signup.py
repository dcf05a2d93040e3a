"""Sign up (/subscribe: the form, its post from our pages or the news site's, JSON with
CORS) and confirm (/confirm/<token>). The rules are in readers.py."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from functools import lru_cache

from flask import Blueprint, Response, jsonify, request

from worker.clock import utcnow
from worker.i18n import NATIVE_NAMES, from_accept_language
from worker.origins import origin_of
from worker.readers.history import KEEP
from worker.readers.signup import (
    ConfirmOutcome,
    check_confirmation,
    confirm_subscription,
    expire_pending,
    release_confirmation,
    request_subscription,
)
from worker.readers.subscribers import (
    InvalidSubscriber,
    SubscriberInput,
    check_address,
    check_language,
    check_name,
    check_regions,
    check_timezone,
)
from worker.store.models import ChangeVia
from worker.tokens import TokenProblem, form_token, manage_token, read_confirm_token
from worker.web.crosssite import origin_refused, takes_other_sites
from worker.web.ratelimit import PER_CLIENT, LimitsUnavailable, client_address
from worker.web.readers import check_form, choices, names, not_offered, sentence
from worker.web.shared import _, language, ngettext, page, problem, public, speak, web
from worker.zones import MAX_ZONE, zone_choices

# Expired sign-ups are deleted by the sign-up endpoint, at most this often per process.
HOUSEKEEPING_SECONDS = 600
SENT_MESSAGE = ("Check your inbox: if the address can receive mail, a message with a confirmation link is on "
                "its way. Nothing is sent to you before you click it.")

bp = Blueprint("signup", __name__)


@bp.route("/subscribe", methods=["GET", "POST", "OPTIONS"], provide_automatic_options=False)
@public
@takes_other_sites  # the news site's pages: their origins are checked below
def subscribe():
    if request.method == "OPTIONS":
        return _preflight()
    if request.method == "GET":
        wanted = [code for code in _codes_or_none(request.args.get("regions", "")) or ()
                  if code in web().offered()]
        return page("subscribe.html", form={"email": "", "name": "", "timezone": "", "language": language()},
                    wanted=names(wanted), choices=choices(), zones=zone_choices(), languages=NATIVE_NAMES,
                    errors={})
    context = web()
    as_json = request.is_json
    if origin_refused(request, context.settings.reader_origins):
        return _refuse(as_json, 403, _("Sign-ups are accepted only from our own pages and the news site."))
    try:
        verdict = context.limiter.hit(client_address(request, context.settings.trusted_proxies))
    except LimitsUnavailable:
        return _refuse(as_json, 503, _("Sign-up is unavailable for a moment: please try again in a few minutes."))
    if not verdict.allowed:
        minutes = -(-verdict.retry_after // 60)
        # Which budget, by its setting, for an operator trying the form by hand; never the
        # numbers. A client learns only what it could tell anyway: its own or everyone's.
        whose = "from your address" if verdict.setting == PER_CLIENT else "from everyone together"
        # The operator's hint stays in English: it names a setting.
        return _refuse(as_json, 429, ngettext("Too many sign-ups just now: please try again in %(num)d minute.",
                                              "Too many sign-ups just now: please try again in %(num)d minutes.",
                                              minutes)
                       + f" (If you run this site: the limit of sign-ups {whose} was reached; {verdict.setting} "
                       "sets it.)", {"Retry-After": str(verdict.retry_after)})
    if not context.secret:
        return _refuse(as_json, 503, _("Sign-up is not available: the site is not fully set up yet."))
    fields, errors = _signup_fields(as_json)
    speak(fields.get("language"))
    if errors:
        if as_json:
            return _cors(jsonify(error="; ".join(errors.values()), errors=errors), 400)
        form = {"email": str(fields.get("email") or "")[:400], "name": str(fields.get("name") or "")[:400],
                "timezone": str(fields.get("timezone_text") or "")[:MAX_ZONE * 2],
                "language": language()}
        return page("subscribe.html", 400, form=form, wanted=names(fields.get("regions") or ()),
                    choices=choices(), zones=zone_choices(), languages=NATIVE_NAMES, errors=errors)
    now = utcnow()
    _housekeeping(now)
    item = SubscriberInput(fields["email"], fields["key"], fields["name"], fields["regions"],
                           fields["timezone"] or KEEP, fields["language"] or KEEP)
    due = request_subscription(context.engine, item, via=ChangeVia.FORM, now=now)
    if due is not None:
        _mail_within_limits(due, item.email_key, now)
    if as_json:
        return _cors(jsonify(status="check-your-inbox", message=SENT_MESSAGE), 202)
    return page("subscribe_sent.html", email=item.email, regions=names(item.regions), back=_back_link())


@bp.get("/confirm/<token>")
@public
def confirm_page(token: str):
    found = _confirmation(token)
    if isinstance(found, Response):
        return found
    subscriber_id, nonce, state = found
    return page("confirm.html", done=False, token=token, regions=names(state.regions),
                already_active=state.already_active, name=state.name, timezone=state.timezone,
                csrf=form_token(web().secret, subscriber_id=subscriber_id, purpose="confirm"))


@bp.post("/confirm/<token>")
@public
def confirm(token: str):
    found = _confirmation(token)
    if isinstance(found, Response):
        return found
    subscriber_id, nonce, _state = found
    refused = check_form(subscriber_id, "confirm", f"/confirm/{token}")
    if refused is not None:
        return refused
    done = confirm_subscription(web().engine, subscriber_id, nonce, now=utcnow())
    if done.outcome is not ConfirmOutcome.CONFIRMED:
        return _used_link()
    return page("confirm.html", done=True, regions=names(done.regions),
                manage_url=f"/manage/{manage_token(web().secret, subscriber_id, done.link_key)}")


def _mail_within_limits(due, email_key: str, now: datetime) -> None:
    """Mail the link unless the mailbox's or domain's limit is spent (address variants,
    user+1@, u.s.e.r@gmail.com, each pass the per-address hour); the answer is the same."""
    context = web()
    try:
        refused = context.limiter.mail_refused(email_key)
    except LimitsUnavailable:
        # No mail without a limit.
        release_confirmation(context.engine, due, reason="not sent: the rate-limit store did not answer", now=now)
        return
    if refused is None:
        context.mailer.submit(due)
    else:
        release_confirmation(context.engine, due, reason=f"not sent: the {refused} limit of confirmation mails "
                             "is spent", now=now)


def _signup_fields(as_json: bool) -> tuple[dict, dict[str, str]]:
    """The submitted fields, checked as imports check them; errors by field."""
    if as_json:
        data = _json_body()
        if not isinstance(data, dict):
            return {}, {"body": "the body must be a JSON object with email, name and regions"}
        raw = {"email": data.get("email"), "name": data.get("name"), "regions": data.get("regions"),
               "timezone": data.get("timezone"), "language": data.get("language")}
    else:
        raw = {"email": request.form.get("email"), "name": request.form.get("name"),
               "regions": ",".join(request.form.getlist("regions")), "timezone": request.form.get("timezone"),
               "language": request.form.get("language")}
    fields: dict = {}
    errors: dict[str, str] = {}
    email, name, regions = raw["email"], raw["name"], raw["regions"]
    try:
        if not isinstance(email, str):
            raise InvalidSubscriber("no email address")
        fields["email"], fields["key"] = check_address(email)
    except InvalidSubscriber as exc:
        fields["email"] = email if isinstance(email, str) else ""
        errors["email"] = sentence(str(exc))
    try:
        if name is not None and not isinstance(name, str):
            raise InvalidSubscriber("the name must be text")
        fields["name"] = check_name(name)
    except InvalidSubscriber as exc:
        errors["name"] = sentence(str(exc))
    if regions in (None, "", []):
        regions = _region_from_referrer() or ""
    try:
        if not isinstance(regions, str) and not (
                isinstance(regions, list) and all(isinstance(code, str) for code in regions)):
            raise InvalidSubscriber("regions must be codes such as RU,UA")
        if not regions:
            raise InvalidSubscriber("choose at least one region")
        fields["regions"] = check_regions(regions)
    except InvalidSubscriber as exc:
        errors["regions"] = sentence(str(exc))
    else:
        refused = not_offered(fields["regions"])
        if refused is not None:
            errors["regions"] = sentence(refused)
            fields["regions"] = ()
    zone = raw["timezone"]
    fields["timezone_text"] = zone if isinstance(zone, str) else ""
    try:
        if zone is not None and not isinstance(zone, str):
            raise InvalidSubscriber("the time zone must be text such as Europe/Berlin")
        # Empty: none given (a new reader gets their region's zone, a known one keeps theirs).
        fields["timezone"] = check_timezone(zone)
    except InvalidSubscriber as exc:
        errors["timezone"] = sentence(str(exc))
    language = raw["language"]
    try:
        if language is not None and not isinstance(language, str):
            raise InvalidSubscriber("the language must be text such as en, ru or uk")
        # Not given: the browser's first language we speak, else the list's (stored as none).
        fields["language"] = check_language(language) or from_accept_language(request.headers.get("Accept-Language"))
    except InvalidSubscriber as exc:
        errors["language"] = sentence(str(exc))
    return fields, errors


def _housekeeping(now: datetime) -> None:
    context = web()
    if context.housekeeping.claim():
        expire_pending(context.engine, now=now, after=timedelta(days=context.settings.pending_expiry_days))


def _preflight() -> Response:
    response = Response(status=204)
    origin = _cors_origin()
    if origin is not None:
        response.headers.update({
            "Access-Control-Allow-Origin": origin, "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": "Content-Type", "Access-Control-Max-Age": "86400",
        })
    response.headers["Vary"] = "Origin"
    return response


def _cors(response: Response, status: int) -> Response:
    response.status_code = status
    origin = _cors_origin()
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Vary"] = "Origin"
    return response


def _cors_origin() -> str | None:
    """The request's Origin when it may read our answers (CORS), else None."""
    origin = request.headers.get("Origin", "").lower()
    return origin if origin in web().settings.reader_origins else None


def _refuse(as_json: bool, status: int, message: str, headers: dict | None = None) -> Response:
    if as_json:
        response = _cors(jsonify(error=message), status)
        response.headers.update(headers or {})
        return response
    titles = {403: _("Not from here"), 429: _("Please wait a moment"), 503: _("Not available right now")}
    return problem(status, titles.get(status, _("Not accepted")), message, headers=headers)


def _back_link() -> tuple[str, str] | None:
    """Back to the news page the form was on, when the browser says and it is the site's."""
    context = web()
    referrer = request.headers.get("Referer", "")
    came_from = origin_of(referrer) if referrer else None
    if came_from in context.settings.reader_origins and came_from != context.own_origin:
        return referrer, _("Back to the news")
    return (context.settings.site_url, _("Back to the news")) if context.settings.site_url else None


def _confirmation(token: str):
    """(subscriber id, nonce, state) of a live link, or the page that refuses it."""
    context = web()
    hours = context.settings.confirm_link_hours
    read = read_confirm_token(context.secret, token, max_age=hours * 3600) if context.secret \
        else TokenProblem.INVALID
    if read is TokenProblem.EXPIRED:
        return problem(410, _("This link has expired"),
                       ngettext("Confirmation links work for %(num)d hour. Sign up again and we will send you a "
                                "new one.", "Confirmation links work for %(num)d hours. Sign up again and we will "
                                "send you a new one.", hours), link=("/subscribe", _("Sign up again")))
    if isinstance(read, TokenProblem):
        return problem(400, _("This link is not valid"),
                       _("This confirmation link is not one of ours, or was cut short when it was copied. "
                         "Open it straight from the email, or sign up again."), link=("/subscribe", _("Sign up")))
    state = check_confirmation(context.engine, read.subscriber_id, read.nonce)
    speak(state.language)
    if state.outcome is ConfirmOutcome.GONE:
        return problem(410, _("This link is no longer valid"),
                       _("The sign-up it confirms is no longer on record. Sign up again to get a new link."),
                       link=("/subscribe", _("Sign up again")))
    if state.outcome is ConfirmOutcome.USED:
        return _used_link()
    return read.subscriber_id, read.nonce, state


def _used_link() -> Response:
    return problem(410, _("This link was already used"),
                   _("This confirmation link was used already, or a newer one was sent since: each link "
                     "works once. If you are subscribed, every newsletter has a link to manage your regions."))


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


@lru_cache(maxsize=8)
def _region_pattern(region_url: str) -> re.Pattern | None:
    if not region_url:
        return None
    return re.compile(re.escape(region_url).replace(re.escape("{region}"), "([A-Za-z]{2})") + r"(?:[/?#].*)?")


def _region_from_referrer() -> str | None:
    """A sign-up from a region's page on the news site (NEWSLETTER_REGION_URL) follows that region."""
    pattern = _region_pattern(web().settings.region_url)
    referrer = request.headers.get("Referer", "")
    match = pattern.fullmatch(referrer) if pattern is not None and len(referrer) < 2048 else None
    return match[1] if match else None
