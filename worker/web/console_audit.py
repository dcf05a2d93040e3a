"""/operator/audit: what operators changed, newest first (the `newsletter audit` table),
a page at a time (keyset on the row id: `?before=ID`)."""

from __future__ import annotations

from flask import Blueprint, request

from worker.clock import utcnow
from worker.operators.audit import audit_since
from worker.web.shared import page, web

bp = Blueprint("console_audit", __name__)
PAGE = 100


@bp.get("/operator/audit")
def audit_page():
    before = request.args.get("before", "")
    before_id = int(before) if before.isdigit() and len(before) < 19 else None
    rows = audit_since(web().engine, limit=PAGE + 1, before_id=before_id)
    more = rows[PAGE][0] if len(rows) > PAGE else None
    return page("console_audit.html", rows=[entry for _, entry in rows[:PAGE]],
                next_before=rows[PAGE - 1][0] if more else None, now=utcnow())
