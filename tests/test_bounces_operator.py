"""What an operator does with bounces: see what a mailbox would do without changing
anything (--dry-run --json), decide the reports kept for review, undo a bounce
(`subscribers reactivate`), and have beat read a local Maildir (NEWSLETTER_BOUNCE_MAILDIR)."""

from __future__ import annotations

import json
import mailbox
from pathlib import Path

import sqlalchemy as sa

from tests.bounce_support import (
    BOUNCE_ADDRESS,
    NOW,
    RETURN_PATH,
    SECRET,
    arf,
    bounce_events,
    delivery,
    dsn,
    events,
    sent_editions,
    subscriber,
)
from worker.bounces.apply import apply_report
from worker.bounces.mailboxes import process_configured
from worker.bounces.reports import MAX_REPORT_BYTES, read_report
from worker.store.db import session_scope
from worker.store.models import BounceEvent

A, B, C = "alice@example.net", "bob@example.net", "carol@example.net"
ENV = {"NEWSLETTER_SECRET_KEY": SECRET, "NEWSLETTER_BOUNCE_ADDRESS": BOUNCE_ADDRESS}
UNREADABLE = "smtp; 550 Your message could not be handled"


def _maildir(root: Path, messages: dict[str, bytes]) -> Path:
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    for name, data in messages.items():
        (root / "new" / name).write_bytes(data)
    return root


def _snapshot(engine, box: Path) -> tuple:
    with session_scope(engine) as session:
        rows = session.execute(sa.text("SELECT status, transient_bounces FROM subscribers ORDER BY id")).all()
        ledger = session.execute(sa.text("SELECT state FROM deliveries ORDER BY id")).all()
        reports = session.scalar(sa.select(sa.func.count()).select_from(BounceEvent))
    files = sorted(str(p.relative_to(box)) for p in box.rglob("*") if p.is_file())
    return [tuple(r) for r in rows], [tuple(r) for r in ledger], reports, files


def test_dry_run_json_says_what_each_message_would_do_and_changes_nothing(engine, run_cli):
    ids = sent_editions(engine, [A, B, C])
    box = _maildir(Path.cwd() / "Maildir", {
        "1.bounce": dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])),
        "2.complaint": arf(B, report_id="<c@fbl>", mail_from=RETURN_PATH.for_delivery(ids[(1, B)])),
        "3.ours": dsn(C, status="5.0.0", diagnostic=UNREADABLE, to=RETURN_PATH.for_delivery(ids[(1, C)]),
                      report_id="<r@mx>"),
        "4.reply": b"Subject: Out of office\r\n\r\naway\r\n",
        "5.big": b"Subject: x\r\n\r\n" + b"x" * (MAX_REPORT_BYTES + 10),
        "6.forged": dsn(B, to=BOUNCE_ADDRESS, report_id="<f@attacker>"),
    })
    before = _snapshot(engine, box)
    result = run_cli("bounces", "process", "--maildir", str(box), "--dry-run", "--json", env=ENV)
    assert result.code == 1, result.err  # as a real run: a message was kept unread
    lines = [json.loads(line) for line in result.out.splitlines()]
    assert lines == [
        {"file": "new/1.bounce", "kind": "permanent", "reason": "userunknown", "recipient": A, "code": "5.1.1",
         "delivery": ids[(1, A)], "signup": None, "ignored": None},
        {"file": "new/2.complaint", "kind": "complaint", "reason": "feedback", "recipient": B, "code": None,
         "delivery": ids[(1, B)], "signup": None, "ignored": None},
        {"file": "new/3.ours", "kind": "review", "reason": "undefined", "recipient": C, "code": "5.0.0",
         "delivery": ids[(1, C)], "signup": None, "ignored": None},
        {"file": "new/4.reply", "kind": None, "reason": None, "recipient": None, "code": None, "delivery": None,
         "signup": None, "ignored": "an auto-reply"},
        {"file": "new/5.big", "kind": None, "reason": None, "recipient": None, "code": None, "delivery": None,
         "signup": None, "ignored": f"kept for a human: {MAX_REPORT_BYTES + 24} bytes, over the {MAX_REPORT_BYTES} read"},
        {"file": "new/6.forged", "kind": None, "reason": "userunknown", "recipient": B, "code": "5.1.1",
         "delivery": None, "signup": None, "ignored": "names no delivery of ours (no tag or Message-ID)"},
    ]
    assert _snapshot(engine, box) == before  # no flag, no move, nothing applied
    assert all(p.parent.name == "new" for p in box.rglob("*") if p.is_file())
    # The same mailbox processed for real does what the dry run said.
    real = run_cli("bounces", "process", "--maildir", str(box), env=ENV)
    assert "applied: 1 complaint, 1 permanent, 1 review" in real.out
    assert subscriber(engine, A).status == "bounced" and subscriber(engine, C).status == "active"


def test_dry_run_on_an_mbox_and_json_alone_is_refused(engine, run_cli):
    ids = sent_editions(engine, [A])
    path = Path("b.mbox")
    box = mailbox.mbox(path)
    box.add(dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])))
    box.close()
    result = run_cli("bounces", "process", "--mbox", str(path), "--dry-run", env=ENV)
    assert result.code == 0 and result.out.startswith("message 1: permanent userunknown alice@example.net 5.1.1")
    assert subscriber(engine, A).status == "active" and bounce_events(engine) == []
    refused = run_cli("bounces", "process", "--mbox", str(path), "--json", env=ENV)
    assert refused.code == 2 and "--json goes with --dry-run" in refused.err


def test_a_report_kept_for_review_is_counted_listed_and_decided(engine, run_cli):
    ids = sent_editions(engine, [A, B])
    for n, who in enumerate((A, B)):
        data = dsn(who, status="5.0.0", diagnostic=UNREADABLE, to=RETURN_PATH.for_delivery(ids[(1, who)]),
                   report_id=f"<r{n}@mx>")
        for report in read_report(data, return_path=RETURN_PATH, message_id_domain="localhost").reports:
            apply_report(engine, report, transient_limit=5, now=NOW)
    assert subscriber(engine, A).status == "active" and delivery(engine, ids[(1, A)]).state == "sent"
    status = run_cli("status", "weekly-2025-W01")
    assert "WARNING: 2 reports of ours could not be read: kept for review" in status.out
    listed = run_cli("bounces", "review")
    assert listed.code == 0 and "550 Your message could not be handled" in listed.out and A in listed.out
    rows = json.loads(run_cli("bounces", "review", "--json").out)
    first, second = (r["id"] for r in rows)
    assert [r["reader"] for r in rows] == [A, B]
    assert run_cli("bounces", "review", "--permanent", str(first)).out.strip() == f"report {first}: permanent"
    assert subscriber(engine, A).status == "bounced" and delivery(engine, ids[(1, A)]).state == "bounced"
    assert events(engine, A)[-1][0] == "bounced" and events(engine, A)[-1][2].startswith("reviewed by cli")
    assert run_cli("bounces", "review", "--ignore", str(second)).out.strip() == f"report {second}: dismissed"
    assert subscriber(engine, B).status == "active"
    again = run_cli("bounces", "review", "--ignore", str(first))
    assert again.code == 2 and f"no report kept for review has id {first}" in again.err
    assert run_cli("bounces", "review").out.strip() == "no reports waiting for review"


def test_reactivate_undoes_a_bounce_with_who_and_why_and_a_complaint_only_by_force(engine, run_cli):
    ids = sent_editions(engine, [A, B, C])
    for data in (dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])),
                 arf(None, mail_from=RETURN_PATH.for_delivery(ids[(1, B)]))):
        for report in read_report(data, return_path=RETURN_PATH, message_id_domain="localhost").reports:
            apply_report(engine, report, transient_limit=5, now=NOW)
    assert (subscriber(engine, A).status, subscriber(engine, B).status) == ("bounced", "complained")
    done = run_cli("subscribers", "reactivate", A, "--reason", "mailbox restored, asked by phone")
    assert done.code == 0 and done.out.strip() == f"{A}: bounced -> active"
    kind, via, note = events(engine, A)[-1]
    assert (kind, via) == ("reactivated", "cli") and note.startswith("reactivated by cli")
    assert note.endswith(": mailbox restored, asked by phone")
    shown = run_cli("subscribers", "show", A)
    assert "mailbox restored, asked by phone" in shown.out and "userunknown" in shown.out
    assert "late reports (after the relay accepted the message):" in shown.out
    refused = run_cli("subscribers", "reactivate", B, "--reason", "x")
    assert refused.code == 2 and "complained" in refused.err and "--force" in refused.err
    assert subscriber(engine, B).status == "complained"
    assert run_cli("subscribers", "reactivate", B, "--reason", "asked us in writing", "--force").code == 0
    assert subscriber(engine, B).status == "active"
    active = run_cli("subscribers", "reactivate", C, "--reason", "x")
    assert active.code == 2 and "is active" in active.err
    assert run_cli("subscribers", "reactivate", A, "--reason", "  ").code == 2
    assert run_cli("subscribers", "reactivate", "nobody@example.net", "--reason", "x").code == 2


def test_beat_reads_a_local_maildir_every_five_minutes(engine, settings, tmp_path):
    from worker.celery_app import create_app

    ids = sent_editions(engine, [A])
    box = _maildir(tmp_path / "Bounces", {"1": dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)]))})
    settings = settings.model_copy(update={"bounce_address": BOUNCE_ADDRESS, "bounce_maildir": box})
    assert create_app(settings).conf.beat_schedule["bounces"] == {"task": "worker.tasks.process_bounces",
                                                                  "schedule": 300.0}
    assert "bounces" not in create_app(settings.model_copy(update={"bounce_maildir": None})).conf.beat_schedule
    summary = process_configured(engine, settings, now=NOW)
    assert summary.messages == 1 and dict(summary.applied) == {"permanent": 1}
    assert sorted(p.name for p in (box / "cur").iterdir()) == ["1:2,S"]
    assert subscriber(engine, A).status == "bounced"


def _reactivate_token(page: str) -> str:
    import re

    found = re.search(r'action="/operator/readers/reactivate" class="reactivate">\s*<input type="hidden" '
                      r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found[1]


def test_the_operator_page_reactivates_a_bounced_reader_under_the_forms_rules(engine, settings):
    from tests.support.web import LOOPBACK, REMOTE, web_client

    ids = sent_editions(engine, [A, B])
    for data in (dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])),
                 arf(None, mail_from=RETURN_PATH.for_delivery(ids[(1, B)]))):
        for report in read_report(data, return_path=RETURN_PATH, message_id_domain="localhost").reports:
            apply_report(engine, report, transient_limit=5, now=NOW)
    url = "/operator/readers/reactivate"
    token = "operator-page-token"
    client = web_client(engine, settings, token)
    auth = {"Authorization": f"Bearer {token}"}
    page = client.get("/operator", environ_base=REMOTE, headers=auth)
    assert page.status_code == 200 and "Undo a bounce" in page.text
    csrf = _reactivate_token(page.text)
    form = {"csrf": csrf, "email": A, "reason": "mailbox fixed <b>"}
    assert client.post(url, data=form, environ_base=REMOTE).status_code == 401
    assert client.post(url, data={**form, "csrf": csrf + "x"}, environ_base=REMOTE, headers=auth).status_code == 400
    assert client.post(url, data=form, environ_base=REMOTE,
                       headers={**auth, "Origin": "https://evil.example"}).status_code == 403
    assert web_client(engine, settings).post(url, data=form, environ_base=LOOPBACK).status_code == 400
    assert subscriber(engine, A).status == "bounced"
    done = client.post(url, data=form, environ_base=REMOTE, headers={**auth, "Origin": "http://localhost"})
    assert done.status_code == 200 and f"{A} was bounced and is active again" in done.text
    assert subscriber(engine, A).status == "active"
    assert events(engine, A)[-1] == ("reactivated", "operator-page", "reactivated by operator token: mailbox fixed <b>")
    refused = client.post(url, data={**form, "email": B}, environ_base=REMOTE, headers=auth)
    assert refused.status_code == 409 and "complained" in refused.text and subscriber(engine, B).status == "complained"
    forced = client.post(url, data={**form, "email": B, "force": "1"}, environ_base=REMOTE, headers=auth)
    assert forced.status_code == 200 and subscriber(engine, B).status == "active"


def test_one_report_per_delivery_waits_for_review_however_many_are_mailed(engine):
    """Whoever holds a tag (the reader it was sent to) could mail unreadable reports by the
    thousand: the list for review holds one per delivery."""
    from worker.bounces.apply import Applied

    ids = sent_editions(engine, [A])
    results = []
    for n in range(20):
        data = dsn(A, status="5.0.0", diagnostic=UNREADABLE, to=RETURN_PATH.for_delivery(ids[(1, A)]),
                   report_id=f"<flood{n}@attacker>")
        for report in read_report(data, return_path=RETURN_PATH, message_id_domain="localhost").reports:
            results.append(apply_report(engine, report, transient_limit=5, now=NOW))
    assert results.count(Applied.APPLIED) == 1 and results.count(Applied.DUPLICATE) == 19
    assert [e.kind for e in bounce_events(engine)] == ["review"]


def test_dry_run_text_never_prints_a_control_character_from_a_file_name(engine, run_cli):
    box = _maildir(Path.cwd() / "Maildir", {"1.\x1b[2Jx": b"Subject: Out of office\r\n\r\naway\r\n"})
    result = run_cli("bounces", "process", "--maildir", str(box), "--dry-run", env=ENV)
    assert result.out == "new/1.?[2Jx: ignored an auto-reply\n"
    assert '"file": "new/1.\\u001b[2Jx"' in run_cli("bounces", "process", "--maildir", str(box), "--dry-run",
                                                   "--json", env=ENV).out


def _no_login_name(monkeypatch):
    """As in a container run under an arbitrary UID: no USER or LOGNAME, no passwd entry."""
    import os
    import pwd

    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    uid = next(u for u in range(424242, 10**7) if u not in {p.pw_uid for p in pwd.getpwall()})
    monkeypatch.setattr(os, "getuid", lambda: uid)
    return uid


def test_commands_that_record_who_work_under_a_uid_with_no_name(engine, run_cli, monkeypatch):
    from worker.cli.who import who

    ids = sent_editions(engine, [A])
    uid = _no_login_name(monkeypatch)
    assert who() == f"uid {uid}"
    assert run_cli("subscribers", "reactivate", A, "--reason", "x").code == 2  # active: nothing to undo
    data = dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)]))
    for report in read_report(data, return_path=RETURN_PATH, message_id_domain="localhost").reports:
        apply_report(engine, report, transient_limit=5, now=NOW)
    done = run_cli("subscribers", "reactivate", A, "--reason", "restored")
    assert done.code == 0, done.err
    assert events(engine, A)[-1] == ("reactivated", "cli", f"reactivated by cli (uid {uid}): restored")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE deliveries SET state = 'unknown'"))
    resolved = run_cli("deliveries", "resolve", "weekly-2025-W01", "--sent", "--all", env=ENV)
    assert resolved.code == 0, resolved.err
    assert f"(by uid {uid} at " in resolved.out
    assert delivery(engine, ids[(1, A)]).resolved_by == f"uid {uid}"
