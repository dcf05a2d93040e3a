"""Bounce and complaint events posted by relays (docs/bounces.md).

- POST /events/bounces: our generic JSON shape, as application/json; a machine route
  (crosssite.py): NEWSLETTER_OPERATOR_TOKEN as a Bearer token only, never from another site.
- POST /events/ses: Amazon SES notifications through SNS. SNS cannot send our token, so
  this route is public and believes a message only when SNS signed it (providers.py) and
  it comes from NEWSLETTER_SES_TOPIC_ARN; with no topic set the route does not exist.

Either way each report goes through worker.bounces.apply, so a retried post changes nothing.
"""

from __future__ import annotations

import json
import logging

from flask import Blueprint, Response, abort, request

from worker.bounces.apply import Applied, apply_report
from worker.bounces.providers import BadEvent, read_generic, read_ses, verify_sns
from worker.bounces.reports import Reading
from worker.bounces.verp import ReturnPath
from worker.clock import utcnow
from worker.text import single_line
from worker.web.shared import public, web

log = logging.getLogger(__name__)

# Our events are small; an SNS message is at most 256 KB.
MAX_GENERIC_BODY = 64 * 1024
MAX_SNS_BODY = 256 * 1024


bp = Blueprint("events", __name__)


@bp.post("/events/bounces")
def bounce_events():
    try:
        readings = read_generic(_body(MAX_GENERIC_BODY), return_path=_return_path(),
                                secret=web().settings.require_secret_key())
    except BadEvent as exc:
        return Response(f"{exc}\n", status=400, mimetype="text/plain")
    counts = _apply(readings)
    return Response(json.dumps(counts) + "\n", status=400 if counts["rejected"] else 200,
                    mimetype="application/json")


@bp.post("/events/ses")
@public
def ses_events():
    settings = web().settings
    if not settings.ses_topic_arn:
        abort(404)
    # SNS posts its JSON as text/plain unless the subscription's delivery policy says
    # otherwise: taken here only because the message's signature is checked next.
    message = _body(MAX_SNS_BODY, ("text/plain", "application/json"))
    if not isinstance(message, dict):
        return Response("not an SNS message\n", status=400, mimetype="text/plain")
    try:
        verify_sns(message, topic_arn=settings.ses_topic_arn, now=utcnow(),
                   fetch_certificate=web().certificates)
    except BadEvent as exc:
        log.warning("SES event refused: %s", exc)
        return Response(f"{exc}\n", status=403, mimetype="text/plain")
    except Exception as exc:  # noqa: BLE001 - the certificate could not be fetched: SNS retries
        log.warning("SES event: certificate unavailable: %s", single_line(str(exc))[:300] or type(exc).__name__)
        return Response("certificate unavailable, try again\n", status=503, mimetype="text/plain")
    if message["Type"] != "Notification":
        # Subscribing is the operator's act: the link is logged, never followed from here.
        log.warning("SNS %s for %s: to confirm, open %s", message["Type"], message["TopicArn"],
                    message.get("SubscribeURL"))
        return Response(f"{message['Type']} received; the operator confirms it by its SubscribeURL "
                        "(logged)\n", mimetype="text/plain")
    try:
        reading = read_ses(json.loads(message["Message"]), return_path=_return_path(),
                           sns_id=str(message.get("MessageId", "")))
    except (ValueError, BadEvent) as exc:
        return Response(f"unreadable SES notification: {exc}\n"[:300], status=400, mimetype="text/plain")
    return Response(json.dumps(_apply([reading])) + "\n", mimetype="application/json")


def _return_path() -> ReturnPath | None:
    settings = web().settings
    if not settings.bounce_address:
        return None
    return ReturnPath.parse(settings.bounce_address, settings.require_secret_key())


def _apply(readings: list[Reading | BadEvent]) -> dict:
    counts = {"applied": 0, "duplicates": 0, "unmatched": 0, "ignored": 0, "rejected": []}
    now = utcnow()
    engine, limit = web().engine, web().settings.bounce_transient_limit
    for index, reading in enumerate(readings):
        if isinstance(reading, BadEvent):
            counts["rejected"].append({"index": index, "error": str(reading)})
            continue
        counts["ignored"] += 0 if reading.reports else 1
        for report in reading.reports:
            result = apply_report(engine, report, transient_limit=limit, now=now)
            key = {Applied.APPLIED: "applied", Applied.DUPLICATE: "duplicates"}.get(result, "unmatched")
            counts[key] += 1
    return counts


def _body(limit: int, types: tuple[str, ...] = ("application/json",)):
    request.max_content_length = limit
    if request.mimetype not in types:
        abort(Response(f"The body must be sent as {' or '.join(types)}.\n", status=415, mimetype="text/plain"))
    try:
        return json.loads(request.get_data(cache=False))
    except (ValueError, UnicodeDecodeError):
        abort(Response("The body is not JSON.\n", status=400, mimetype="text/plain"))
