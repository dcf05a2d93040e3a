"""The console's readers: /operator/subscribers (search, a reader's page, their actions,
import and export; owned by the readers pages' work, issue 25). Every change is made by the
CLI's own functions (worker/readers/, worker/bounces/reactivate.py) and recorded with the
operator's name.

Every POST here is under the console's form rules (forms.py)."""

from __future__ import annotations

from urllib.parse import quote

from flask import Blueprint, Response, redirect, request

from worker.clock import utcnow
from worker.console.readers import (
    PAGE,
    BadSearch,
    export_csv,
    find_readers,
    make_search,
    reader_record,
)
from worker.errors import UsageError
from worker.operators.audit import audit
from worker.readers.subscribers import InvalidSubscriber, check_address
from worker.store.models import ChangeVia, SubscriberStatus
from worker.web.forms import form_refused, form_token, operator_name
from worker.web.shared import page, problem, web

bp = Blueprint("console_readers", __name__)

# What a page says after an action (the action redirects here with ?done=NAME): fixed
# texts, so nothing typed into a URL is shown as the console's word.
NOTICES = {
    "unsubscribed": "Unsubscribed: they get no more editions. Their history records it with your name.",
    "resubscribed": "Resubscribed: they get the next edition. The reason is in their history.",
    "regions": "Regions changed. Their history records it with your name.",
    "unchanged": "Nothing to change: that was already so.",
    "purged": "Purged: the reader, their history and their rows in the ledger are gone.",
}
# Over this, an upload is refused before it is read (the app's limit for every other form
# stays MAX_BODY, app.py).
MAX_UPLOAD = 50 * 1024 * 1024
# Room for the multipart envelope and the form's other fields.
UPLOAD_SLACK = 64 * 1024
MAX_REASON = 200


@bp.get("/operator/subscribers")
def subscribers_page():
    args = request.args
    try:
        search = make_search(args.get("q", ""), args.get("status", ""), args.get("region", ""), args.get("after", ""))
    except BadSearch as exc:
        return problem(400, "Not a search", str(exc), link=("/operator/subscribers", "All subscribers"))
    found = find_readers(web().engine, search)
    regions = sorted(set(web().offered()) | ({search.region} if search.region else set()))
    return page("console_subscribers.html", search=search, found=found, page_size=PAGE, regions=regions,
                statuses=[s.value for s in SubscriberStatus], notice=NOTICES.get(args.get("done", "")),
                next_url=_next_url(search, found.next_after))


def _next_url(search, after: str | None) -> str | None:
    if after is None:
        return None
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in
                     (("q", search.q), ("status", search.status), ("region", search.region), ("after", after))
                     if value)
    return f"/operator/subscribers?{query}"


@bp.get("/operator/subscribers/<path:address>")
def reader_page(address: str):
    found = reader_record(web().engine, web().settings, address)
    if found is None:
        return problem(404, "No such reader", f"Nobody on the list has the address {address[:320]!r}.",
                       link=("/operator/subscribers", "Back to the subscribers"))
    return page("console_reader.html", reader=found, r=found.record, token=form_token,
                notice=NOTICES.get(request.args.get("done", "")), max_reason=MAX_REASON)


def reader_url(email: str) -> str:
    return "/operator/subscribers/" + quote(email, safe="@")


@bp.post("/operator/subscribers/unsubscribe")
def unsubscribe():
    from worker.readers.subscribers import set_status

    email, stop = _posted("unsubscribe", "nobody can be unsubscribed")
    if stop is not None:
        return stop
    before = _status_of(email)
    row = set_status(web().engine, email, SubscriberStatus.UNSUBSCRIBED, via=ChangeVia.OPERATOR_PAGE)
    if row is None:
        return _refuse(404, "No such reader", f"Nobody on the list has the address {email!r}.", email)
    return _done(email, "unchanged" if before == SubscriberStatus.UNSUBSCRIBED else "unsubscribed")


@bp.post("/operator/subscribers/resubscribe")
def resubscribe():
    email, stop = _posted("resubscribe", "nobody can be resubscribed")
    if stop is not None:
        return stop
    reason = " ".join(request.form.get("reason", "")[:1000].split())
    if not reason or len(reason) > MAX_REASON:
        return _refuse(400, "Give the reason", f"Say why they come back (one line, at most {MAX_REASON} "
                       "characters): it is kept in their history. Nothing was changed.", email)
    status = _status_of(email)
    came_back = request.form.get("came_back") == "1"
    if status is None:
        return _refuse(404, "No such reader", f"Nobody on the list has the address {email!r}.", email)
    if status == SubscriberStatus.COMPLAINED and not came_back:
        return _refuse(409, "They complained", f"{email} marked a digest as spam. Resubscribe them only if they "
                       "asked to come back: tick the box that says so. Nothing was changed.", email)
    try:
        _resubscribe(email, status, reason, came_back)
    except (UsageError, ValueError) as exc:
        return _refuse(409, "Not resubscribed", f"{exc}. Nothing was changed.", email)
    return _done(email, "resubscribed")


def _resubscribe(email: str, status: str, reason: str, came_back: bool) -> None:
    """An unsubscribed reader as `subscribers add --resubscribe` does it; a bounced or
    complained one as `subscribers reactivate` (--force: they asked to come back)."""
    from worker.bounces.reactivate import CannotReactivate, reactivate
    from worker.readers.subscribers import add_subscriber, make_input

    if status == SubscriberStatus.UNSUBSCRIBED:
        record = reader_record(web().engine, web().settings, email, deliveries=1)
        if record is None:
            raise UsageError(f"no subscriber {email!r}")
        add_subscriber(web().engine, make_input(email, None, record.record["regions"]), resubscribe=True,
                       via=ChangeVia.OPERATOR_PAGE, note=f"resubscribed by {operator_name()}: {reason}",
                       only=frozenset({SubscriberStatus.UNSUBSCRIBED}))
        return
    if status not in (SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED):
        raise UsageError(f"{email} is {status}: only an unsubscribed, bounced or complained reader is resubscribed")
    try:
        reactivate(web().engine, email, reason=reason, who=operator_name(), via=ChangeVia.OPERATOR_PAGE,
                   now=utcnow(), force=came_back)
    except CannotReactivate as exc:
        raise UsageError(str(exc)) from None


@bp.post("/operator/subscribers/regions")
def change_regions():
    from worker.readers.subscribers import add_subscriber, check_regions, make_input

    email, stop = _posted("regions", "no regions can be changed")
    if stop is not None:
        return stop
    try:
        codes = check_regions(request.form.get("regions", "")[:1000])
    except InvalidSubscriber as exc:
        return _refuse(400, "Not regions", f"{exc}. Nothing was changed.", email)
    if _status_of(email) is None:
        return _refuse(404, "No such reader", f"Nobody on the list has the address {email!r}.", email)
    try:
        outcome = add_subscriber(web().engine, make_input(email, None, list(codes)), via=ChangeVia.OPERATOR_PAGE,
                                 only=frozenset({SubscriberStatus.ACTIVE}))
    except UsageError as exc:
        return _refuse(409, "Not changed", f"{exc}: only an active reader's regions are changed here. "
                       "Nothing was changed.", email)
    return _done(email, "unchanged" if outcome == "unchanged" else "regions")


@bp.post("/operator/subscribers/purge")
def purge():
    from worker.readers.subscribers import purge_subscriber

    email, stop = _posted("purge", "nobody can be purged")
    if stop is not None:
        return stop
    if request.form.get("confirm", "").strip() != email:
        return _refuse(400, "Type the address", "To purge a reader, type their address exactly as shown. "
                       "Nothing was changed.", email)
    if not purge_subscriber(web().engine, email):
        return problem(404, "No such reader", f"Nobody on the list has the address {email!r}: nothing to purge.",
                       link=("/operator/subscribers", "Back to the subscribers"))
    return redirect("/operator/subscribers?done=purged", code=303)


def _posted(action: str, nothing: str) -> tuple[str, Response | None]:
    """The posted reader's address and the form rules' refusal, if any. The form's token
    is bound to the action and the address key."""
    email = request.form.get("email", "").strip()[:320]
    try:
        key = check_address(email)[1]
    except InvalidSubscriber:
        key = "(not an address)"
    return email, form_refused(action, key, nothing, back=reader_url(email) if email else "/operator/subscribers")


def _status_of(email: str) -> str | None:
    found = reader_record(web().engine, web().settings, email, deliveries=1)
    return None if found is None else found.record["status"]


def _done(email: str, notice: str) -> Response:
    return redirect(f"{reader_url(email)}?done={notice}", code=303)


def _refuse(status: int, title: str, message: str, email: str) -> Response:
    return problem(status, title, message, link=(reader_url(email), "Back to the reader"))


@bp.route("/operator/subscribers/import", methods=["GET", "POST"])
def import_page():
    if request.method == "GET":
        return page("console_import.html", token=form_token("import", "subscribers"), report=None,
                    max_mb=MAX_UPLOAD // (1024 * 1024))
    # Only this form may send more than the app's limit: raised for this request alone,
    # and an upload that says it is bigger is refused before a byte of it is read.
    if request.content_length is not None and request.content_length > MAX_UPLOAD + UPLOAD_SLACK:
        return _upload_refused(413, f"The file is over {MAX_UPLOAD // (1024 * 1024)} MB.")
    request.max_content_length = MAX_UPLOAD + UPLOAD_SLACK
    # Werkzeug's multipart parser holds what it has not handed on yet under the form memory
    # limit, file parts too: at the app's 64 KB a file of 200 KB was refused.
    request.max_form_memory_size = MAX_UPLOAD + UPLOAD_SLACK
    stop = form_refused("import", "subscribers", "nothing can be imported", back="/operator/subscribers/import")
    if stop is not None:
        return stop
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        return _upload_refused(400, "Choose a CSV file to upload.")
    data = upload.stream.read(MAX_UPLOAD + 1)
    if len(data) > MAX_UPLOAD:
        return _upload_refused(413, f"The file is over {MAX_UPLOAD // (1024 * 1024)} MB.")
    return _import(data, upload.filename[:200])


def _import(data: bytes, filename: str):
    from worker.readers.subscribers import import_text

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return _upload_refused(400, "That file is not a CSV file: it is not UTF-8 text.")
    if "\x00" in text:
        return _upload_refused(400, "That file is not a CSV file: it holds binary data.")
    try:
        report = import_text(web().engine, text, where=filename, name=filename)
    except UsageError as exc:
        return _upload_refused(400, str(exc))
    return page("console_import.html", token=form_token("import", "subscribers"), report=report, filename=filename,
                max_mb=MAX_UPLOAD // (1024 * 1024))


def _upload_refused(status: int, message: str) -> Response:
    return problem(status, "Not imported", f"{message} Nothing was changed.",
                   link=("/operator/subscribers/import", "Back to the import"))


@bp.get("/operator/subscribers/export")
def export():
    engine = web().engine
    audit(engine, "subscribers-exported", "the list")
    name = f"subscribers-{utcnow():%Y-%m-%d}.csv"
    return Response(export_csv(engine), mimetype="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@bp.post("/operator/readers/reactivate")
def reactivate_reader():
    """Undo a bounce (worker/bounces/reactivate.py), under the same rules as the edition forms."""
    from worker.bounces.reactivate import CannotReactivate, reactivate

    stop = form_refused("reactivate", "reader", "nobody can be reactivated")
    if stop is not None:
        return stop
    email = request.form.get("email", "")[:320]
    try:
        before = reactivate(web().engine, email, reason=request.form.get("reason", "")[:1000], who=operator_name(),
                            via=ChangeVia.OPERATOR_PAGE, now=utcnow(), force=request.form.get("force") == "1")
    except CannotReactivate as exc:
        return _problem(409, "Not reactivated", str(exc))
    return _problem(200, "Reactivated", f"{email} was {before} and is active again; the reason is in their history.")


def _problem(status: int, title: str, message: str) -> Response:
    return problem(status, title, message, link=("/operator", "Back to the operator page"))
