"""Named operators (issue 25): a token printed once and kept as a slow hash; once an
account exists every operator route needs credentials, from loopback too; every change
made through the console or the command line names who made it, in the reader's history
and in the audit trail."""

import base64
import json
import re

import pytest
import sqlalchemy as sa

from tests.support.web import LOOPBACK, REMOTE, web_client
from worker.operators.accounts import Verifier, add_operator, hash_token, token_matches
from worker.operators.actor import acting_as

A = "anna.reader@example.org"


def _basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


def _token(out: str) -> str:
    found = re.search(r"^  (\S+)$", out, re.M)
    assert found, out
    return found[1]


def test_operators_add_prints_a_token_once_and_keeps_only_its_scrypt_hash(run_cli, engine):
    made = run_cli("operators", "add", "anna")
    assert made.code == 0, made.err
    token = _token(made.out)
    assert token.startswith("anna.") and len(token) > 40
    with engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(sa.text("SELECT * FROM operators")) for v in row)
    secret = token.partition(".")[2]
    assert secret not in dump and token not in dump and "scrypt$" in dump
    listed = run_cli("operators", "list", "--json")
    rows = json.loads(listed.out)
    assert [r["name"] for r in rows] == ["anna"] and rows[0]["created_by"].startswith("cli (")
    assert secret not in listed.out
    again = run_cli("operators", "add", "anna")
    assert again.code == 2 and "already an operator named anna" in again.err
    for bad in ("Anna", "an na", "ánna", "a" * 41, "", "_x", "x.y"):
        refused = run_cli("operators", "add", bad)
        assert refused.code == 2 and "cannot be an operator name" in refused.err, bad
    assert run_cli("operators", "remove", "bob").code == 2
    assert run_cli("operators", "remove", "anna").code == 0
    assert json.loads(run_cli("operators", "list", "--json").out) == []


def test_the_hash_is_salted_and_checks_only_its_own_token():
    one, two = hash_token("secret"), hash_token("secret")
    assert one != two and token_matches("secret", one) and token_matches("secret", two)
    assert not token_matches("secreT", one) and not token_matches("secret", "scrypt$1$2$3$x$y")
    assert not token_matches("secret", "plain")


def test_once_an_operator_exists_every_operator_page_needs_credentials_from_loopback_too(engine, settings):
    client = web_client(engine, settings)
    assert client.get("/operator", environ_base=LOOPBACK).status_code == 200  # a fresh install on a laptop
    token = add_operator(engine, "anna")
    secret = token.partition(".")[2]
    for path in ("/operator", "/operator/audit", "/"):
        refused = client.get(path, environ_base=LOOPBACK)
        assert refused.status_code == 401 and "operators add" in refused.text, path
        assert client.get(path, environ_base=REMOTE, headers=_bearer(token)).status_code in (200, 404), path
    assert client.get("/operator", environ_base=REMOTE, headers=_basic("whoever", token)).status_code == 200
    assert client.get("/operator", environ_base=REMOTE, headers=_basic("anna", secret)).status_code == 200
    for wrong in (_basic("bob", secret), _bearer(token + "x"), _bearer(secret), _basic("anna", "anna." + "x" * 43),
                  _bearer("anna."), _bearer("." + secret), {"Authorization": "Digest " + token}):
        assert client.get("/operator", environ_base=LOOPBACK, headers=wrong).status_code == 401, wrong
    page = client.get("/operator", environ_base=REMOTE, headers=_bearer(token))
    assert "Signed in as anna" in page.text


def test_a_removed_operator_is_refused_at_once_and_the_bootstrap_token_still_works(engine, settings, run_cli):
    token = add_operator(engine, "anna")
    client = web_client(engine, settings, "bootstrap-token-of-32-characters-x")
    assert client.get("/operator", environ_base=REMOTE, headers=_bearer(token)).status_code == 200
    assert run_cli("operators", "remove", "anna").code == 0
    assert client.get("/operator", environ_base=REMOTE, headers=_bearer(token)).status_code == 401
    page = client.get("/operator", environ_base=REMOTE, headers=_bearer("bootstrap-token-of-32-characters-x"))
    assert page.status_code == 200 and "Signed in as operator token" in page.text


def test_machine_routes_take_an_operators_token_as_bearer_only(engine, settings):
    token = add_operator(engine, "anna")
    client = web_client(engine, settings)
    assert client.get("/metrics", environ_base=LOOPBACK).status_code == 401
    assert client.get("/metrics", environ_base=REMOTE, headers=_bearer(token)).status_code == 200
    assert client.get("/metrics", environ_base=REMOTE, headers=_basic("anna", token)).status_code == 401


def test_the_verifier_checks_scrypt_once_per_token_and_stored_hash(engine, monkeypatch):
    from worker.operators import accounts

    token = add_operator(engine, "anna")
    calls = []
    real = accounts.token_matches
    monkeypatch.setattr(accounts, "token_matches", lambda *a: calls.append(a) or real(*a))
    verifier = Verifier(engine)
    assert [verifier.verify(token) for _ in range(5)] == ["anna"] * 5
    assert verifier.verify(token + "x") is None and verifier.verify(token + "x") is None
    assert len(calls) == 2


def test_a_console_change_names_the_operator_in_the_history_and_the_audit(engine, settings, run_cli):
    assert run_cli("subscribers", "add", A, "--regions", "RU").code == 0
    assert run_cli("subscribers", "remove", A).code == 0
    token = add_operator(engine, "anna")
    client = web_client(engine, settings)
    page = client.get("/operator", environ_base=REMOTE, headers=_bearer(token)).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page[page.index("/operator/readers/reactivate"):])[1]
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE subscribers SET status = 'bounced'"))
    done = client.post("/operator/readers/reactivate", environ_base=REMOTE, headers=_bearer(token),
                       data={"csrf": csrf, "email": A, "reason": "mailbox fixed"})
    assert done.status_code == 200, done.text
    shown = json.loads(run_cli("subscribers", "show", A, "--json").out)
    assert [(e["kind"], e["via"], e["by"]) for e in shown["history"]][-1] == ("reactivated", "operator-page", "anna")
    assert shown["history"][0]["by"].startswith("cli (")
    audit = [json.loads(line) for line in run_cli("audit", "--json").out.splitlines()]
    assert [(a["who"], a["via"], a["action"], a["target"]) for a in audit] == [
        ("anna", "console", "subscriber-reactivated", A), (audit[1]["who"], "cli", "subscriber-unsubscribed", A),
        (audit[1]["who"], "cli", "subscriber-added", A)]
    assert audit[1]["who"].startswith("cli (") and audit[0]["detail"] == "was bounced: mailbox fixed"
    listed = client.get("/operator/audit", environ_base=REMOTE, headers=_bearer(token))
    assert listed.status_code == 200 and "subscriber-reactivated" in listed.text and "anna" in listed.text


def test_a_form_token_of_one_operator_is_worthless_to_another(engine, settings):
    anna, bob = add_operator(engine, "anna"), add_operator(engine, "bob")
    client = web_client(engine, settings)
    page = client.get("/operator", environ_base=REMOTE, headers=_bearer(anna)).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page[page.index("/operator/readers/reactivate"):])[1]
    refused = client.post("/operator/readers/reactivate", environ_base=REMOTE, headers=_bearer(bob),
                          data={"csrf": csrf, "email": A, "reason": "x"})
    assert refused.status_code == 400 and "Nothing was changed" in refused.text


def test_a_purge_leaves_the_audit_saying_a_reader_was_purged_not_whom(run_cli):
    assert run_cli("subscribers", "add", A, "--regions", "RU").code == 0
    assert run_cli("subscribers", "remove", A, "--purge").code == 0
    out = run_cli("audit", "--json").out
    assert A not in out and "anna.reader" not in out
    actions = [(e["action"], e["target"]) for e in map(json.loads, out.splitlines())]
    assert actions == [("subscriber-purged", "(a purged reader)"), ("subscriber-added", "(a purged reader)")]


def test_audit_since_and_its_bad_input(run_cli):
    assert run_cli("subscribers", "add", A, "--regions", "RU").code == 0
    assert len(run_cli("audit", "--since", "1d", "--json").out.splitlines()) == 1
    assert "nothing changed by an operator since 2999-01-01" in run_cli("audit", "--since", "2999-01-01").out
    for bad in ("yesterday", "5m", "2025-13-01", "-1d"):
        refused = run_cli("audit", "--since", bad)
        assert refused.code == 2 and "--since" in refused.err, bad


def test_nobody_acting_writes_no_audit(engine):
    from worker.operators.audit import audit, audit_since

    assert audit(engine, "x") is False and audit_since(engine) == []
    with acting_as("anna", "console"):
        assert audit(engine, "x", "y") is True
    assert [(e.who, e.action) for _, e in audit_since(engine)] == [("anna", "x")]


@pytest.mark.parametrize("name", ["anna"])
def test_the_last_seen_time_is_kept(engine, name):
    token = add_operator(engine, name)
    verifier = Verifier(engine)
    assert verifier.verify(token) == name
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT last_seen_at FROM operators")).scalar() is not None


def test_wrong_tokens_cost_a_bounded_number_of_checks_and_a_known_token_still_opens(engine, monkeypatch):
    from worker.operators import accounts

    token = add_operator(engine, "anna")
    verifier = Verifier(engine)
    assert verifier.verify(token) == "anna"
    calls = []
    real = accounts.token_matches
    monkeypatch.setattr(accounts, "token_matches", lambda *a: calls.append(a) or real(*a))
    assert all(verifier.verify(f"anna.wrong{n}") is None for n in range(accounts.MAX_FAILED_CHECKS + 15))
    assert len(calls) == accounts.MAX_FAILED_CHECKS
    assert verifier.verify(token) == "anna"


def test_a_form_with_origin_null_is_ours_only_when_the_browser_says_same_origin(engine, settings):
    """Chromium sends `Origin: null` with a page's own form under a no-referrer policy;
    Sec-Fetch-Site (which no page can set) says whether it was ours."""
    token = add_operator(engine, "anna")
    client = web_client(engine, settings)
    page = client.get("/operator", environ_base=REMOTE, headers=_bearer(token)).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page[page.index("/operator/readers/reactivate"):])[1]
    form = {"csrf": csrf, "email": A, "reason": "x"}

    def post(**headers):
        return client.post("/operator/readers/reactivate", environ_base=REMOTE, data=form,
                           headers={**_bearer(token), **headers}).status_code

    assert post(Origin="null") == 403
    assert post(Origin="null", **{"Sec-Fetch-Site": "cross-site"}) == 403
    assert post(Origin="null", **{"Sec-Fetch-Site": "same-origin"}) == 409  # through the checks: no such reader
    assert post(Origin="https://evil.example", **{"Sec-Fetch-Site": "same-origin"}) == 403


def test_expiring_sign_ups_by_command_is_audited_and_by_the_web_app_is_not(run_cli, engine):
    from datetime import timedelta

    from worker.clock import utcnow
    from worker.readers.signup import expire_pending

    old = utcnow() - timedelta(days=30)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO subscribers (email, email_key, regions, status, created_at, updated_at, "
                             "link_key) VALUES ('p@example.org', 'p@example.org', 'RU', 'pending', :t, :t, 'k')"),
                     {"t": old})
    assert run_cli("subscribers", "expire").code == 0
    audit = [json.loads(line) for line in run_cli("audit", "--json").out.splitlines()]
    assert [(a["action"], a["detail"]) for a in audit] == [("sign-ups-expired", "1 never confirmed")]
    assert expire_pending(engine, now=utcnow(), after=timedelta(0)) == 0  # nobody acting: nothing written
