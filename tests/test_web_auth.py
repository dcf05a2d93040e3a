"""Operator pages need NEWSLETTER_OPERATOR_TOKEN (or, with none set, a loopback client);
readers' pages never do."""

import base64
import json
import re

import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from tests.bounce_support import sent_editions
from tests.support.web import LOOPBACK, REMOTE, web_client
from worker.store.db import session_scope
from worker.store.models import BounceEvent, Subscriber
from worker.tokens import manage_token, unsubscribe_token
from worker.web import create_app

# Pages a person opens; the machine routes (/metrics, /events/*) have their own rules below.
OPERATOR_PATHS = ["/", "/?week=2025-W05", "/preview/2025-W05/RU-UA", "/preview/2025-W05/RU-UA/html",
                  "/preview/bogus/RU", "/operator"]
TOKEN = "s3cret-operator=token"




def _basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _bearer(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", OPERATOR_PATHS)
def test_without_a_token_set_only_loopback_clients_reach_operator_pages(sample_engine, settings, path):
    client = web_client(sample_engine, settings)
    refused = client.get(path, environ_base=REMOTE)
    assert refused.status_code == 403 and "NEWSLETTER_OPERATOR_TOKEN" in refused.text
    assert "Russia" not in refused.text
    assert client.get(path, environ_base=LOOPBACK).status_code in (200, 404)
    assert client.get(path, environ_base={"REMOTE_ADDR": "::1"}).status_code in (200, 404)
    assert client.get(path, environ_base={"REMOTE_ADDR": "127.8.9.10"}).status_code in (200, 404)
    # A presented token changes nothing while none is configured.
    assert client.get(path, environ_base=REMOTE, headers=_bearer("")).status_code == 403


def test_the_loopback_rule_believes_the_socket_never_forwarded_headers(sample_engine, settings):
    client = web_client(sample_engine, settings)
    spoofed = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1", "Forwarded": "for=127.0.0.1"}
    assert client.get("/", environ_base=REMOTE, headers=spoofed).status_code == 403
    # A reverse proxy on this host connects from loopback on behalf of anyone: refused too.
    for name in [*spoofed, "X-Forwarded-Host", "X-Forwarded-Proto", "Via"]:
        assert client.get("/", environ_base=LOOPBACK, headers={name: "203.0.113.5"}).status_code == 403
    assert client.get("/", environ_base={"REMOTE_ADDR": "::ffff:127.0.0.1"}).status_code == 200
    assert client.get("/", environ_base={"REMOTE_ADDR": "::ffff:203.0.113.5"}).status_code == 403
    assert client.get("/", environ_base={"REMOTE_ADDR": ""}).status_code == 403  # a unix socket


@pytest.mark.parametrize("path", OPERATOR_PATHS)
def test_with_a_token_set_every_client_needs_it(sample_engine, settings, path):
    client = web_client(sample_engine, settings, TOKEN)
    for environ in (REMOTE, LOOPBACK):
        for headers in ({}, _bearer("wrong"), _basic("operator", "wrong"), _bearer(TOKEN[:-1]),
                        _bearer(TOKEN + "x"), _basic(TOKEN, ""), {"Authorization": TOKEN},
                        {"Authorization": "Basic !!!"}, _basic("ünï", "cödé"), {"Authorization": "Bearer"}):
            refused = client.get(path, environ_base=environ, headers=headers)
            assert refused.status_code == 401, (environ, headers)
            assert refused.headers["WWW-Authenticate"] == 'Basic realm="newsletter operator"'
            assert "Russia" not in refused.text


@pytest.mark.parametrize("path", OPERATOR_PATHS)
def test_the_token_opens_operator_pages_as_bearer_or_basic_password(sample_engine, settings, path):
    client = web_client(sample_engine, settings, TOKEN)
    expected = 404 if "bogus" in path else 200
    for headers in (_bearer(TOKEN), {"Authorization": f"bearer   {TOKEN}"}, _basic("operator", TOKEN),
                    _basic("", TOKEN)):
        assert client.get(path, environ_base=REMOTE, headers=headers).status_code == expected, headers


def test_an_empty_token_setting_counts_as_none(sample_engine, settings):
    client = web_client(sample_engine, settings, "")
    assert client.get("/", environ_base=REMOTE, headers=_basic("x", "")).status_code == 403
    assert client.get("/", environ_base=LOOPBACK).status_code == 200


def test_readers_pages_stay_public_whatever_the_token(sample_engine, settings):
    from tests.test_web import _anna, _send_week

    _send_week(sample_engine, settings)
    anna = _anna(sample_engine)
    token = unsubscribe_token("test-secret-key", anna.id, anna.link_key)
    for client in (web_client(sample_engine, settings, TOKEN), web_client(sample_engine, settings)):
        assert client.get("/healthz", environ_base=REMOTE).status_code == 200
        assert client.get("/archive/weekly-2025-W05/RU-UA", environ_base=REMOTE).status_code == 200
        assert client.get("/archive/weekly-2025-W06/RU-UA", environ_base=REMOTE).status_code == 404
        assert client.get(f"/unsubscribe/{token}", environ_base=REMOTE).status_code == 200
        assert client.get("/no/such/page", environ_base=REMOTE).status_code == 404
    done = client.post(f"/unsubscribe/{token}", data="List-Unsubscribe=One-Click",
                       content_type="application/x-www-form-urlencoded", environ_base=REMOTE)
    assert done.status_code == 200 and "You are unsubscribed" in done.text


def test_operator_pages_are_never_cached(sample_engine, settings):
    page = web_client(sample_engine, settings).get("/?week=2025-W05", environ_base=LOOPBACK)
    assert page.status_code == 200 and page.headers["Cache-Control"] == "no-store"


def test_every_route_not_marked_public_is_the_operators(sample_engine, settings):
    """The whole route map, so a route added later cannot be public by accident: each
    unmarked one refuses a remote client without a token (403) and with a wrong one (401),
    whatever its method."""
    settings = settings.model_copy(update={"ses_topic_arn": "arn:aws:sns:eu-west-1:123456789012:bounces"})
    apps = {None: create_app(settings, sample_engine),
            TOKEN: create_app(settings.model_copy(update={"operator_token": SecretStr(TOKEN)}), sample_engine)}
    public, checked = set(), set()
    for rule in apps[None].url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = apps[None].view_functions[rule.endpoint]
        if getattr(view, "public", False):
            public.add(rule.rule)
            continue
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<{name}>", "x").replace(f"<path:{name}>", "x")
        path = re.sub(r"<[^>]+>", "x", path)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for token, expected, headers in ((None, 403, {}), (TOKEN, 401, _bearer("wrong"))):
                client = apps[token].test_client()
                answer = client.open(path, method=method, environ_base=REMOTE, headers=headers)
                assert answer.status_code == expected, (method, rule.rule, token)
            checked.add((method, rule.rule))
    assert {("GET", "/operator"), ("POST", "/operator/editions/<key>/<action>"), ("POST", "/events/bounces"),
            ("GET", "/metrics"), ("GET", "/")} <= checked
    assert "/events/ses" in public and "/healthz" in public and "/archive/<edition>/<variant>" in public


# Machine routes and cross-site requests (worker/web/crosssite.py)

ANNA = "anna.petrova@example.org"
COMPLAINT = {"type": "complaint", "recipient": ANNA, "id": "forged-1"}
EVIL = "https://evil.example"
# What another site's page can make a browser send without a preflight: a form or text/plain
# body, and the browser's own marks (Origin, else Referer; Sec-Fetch-Site).
CROSS_SITE = [{"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}, {"Origin": EVIL},
              {"Referer": f"{EVIL}/page", "Sec-Fetch-Site": "cross-site"}, {"Origin": "null"},
              {"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}]
SIMPLE_BODIES = [("text/plain", json.dumps(COMPLAINT)),
                 ("application/x-www-form-urlencoded",
                  "List-Unsubscribe=One-Click&email=anna.petrova%40example.org&regions=RU&action=leave&source=page")]


def _reader(engine):
    with session_scope(engine) as session:
        row = session.scalar(sa.select(Subscriber).where(Subscriber.email_key == ANNA))
        return row.id, row.status, row.regions


def _link_key(engine) -> str:
    with session_scope(engine) as session:
        return session.scalar(sa.select(Subscriber.link_key).where(Subscriber.email_key == ANNA))


def _bounce_events(engine) -> int:
    with session_scope(engine) as session:
        return session.scalar(sa.select(sa.func.count()).select_from(BounceEvent))


def test_a_page_in_the_operators_browser_cannot_post_a_complaint(sample_engine, settings):
    """The attack: a text/plain "simple request" to /events/bounces from the operator's browser,
    which is on loopback (no token set) or holds a cached basic login (token set)."""
    sent_editions(sample_engine, [ANNA])  # a delivery the complaint can land on
    for client, headers in ((web_client(sample_engine, settings), {}),
                            (web_client(sample_engine, settings, TOKEN), _basic("operator", TOKEN))):
        for marks in ({}, {"Origin": EVIL, "Sec-Fetch-Site": "cross-site"}):
            answer = client.post("/events/bounces", data=json.dumps(COMPLAINT), content_type="text/plain",
                                 environ_base=LOOPBACK, headers={**headers, **marks})
            assert answer.status_code in (401, 403), (headers, marks)
    assert _reader(sample_engine)[1] == "active" and _bounce_events(sample_engine) == 0


def test_machine_routes_take_the_token_only_as_bearer_never_basic_or_loopback(sample_engine, settings):
    unset, guarded = web_client(sample_engine, settings), web_client(sample_engine, settings, TOKEN)
    for method, path, body in (("GET", "/metrics", None), ("POST", "/events/bounces", [])):
        kwargs = {} if body is None else {"json": body}
        for environ in (LOOPBACK, REMOTE):
            refused = unset.open(path, method=method, environ_base=environ, headers=_bearer(TOKEN), **kwargs)
            assert refused.status_code == 403 and "Authorization: Bearer" in refused.text, (path, environ)
            for headers in ({}, _basic("operator", TOKEN), _basic("", TOKEN), _bearer("wrong"), _bearer(""),
                            {"Authorization": TOKEN}):
                answer = guarded.open(path, method=method, environ_base=environ, headers=headers, **kwargs)
                assert answer.status_code == 401, (path, environ, headers)
                # Never a basic challenge: a browser would prompt, then resend the login on its own.
                assert answer.headers["WWW-Authenticate"] == 'Bearer realm="newsletter machine routes"'
        opened = guarded.open(path, method=method, environ_base=REMOTE, headers=_bearer(TOKEN), **kwargs)
        assert opened.status_code == 200, path


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          "application/json-seq", "text/json", None])
def test_bounce_events_read_a_body_only_sent_as_json(sample_engine, settings, content_type):
    sent_editions(sample_engine, [ANNA])
    client = web_client(sample_engine, settings, TOKEN)
    answer = client.post("/events/bounces", data=json.dumps(COMPLAINT), content_type=content_type,
                         headers=_bearer(TOKEN))
    assert answer.status_code == 415 and "application/json" in answer.text
    assert _reader(sample_engine)[1] == "active"
    accepted = client.post("/events/bounces", data=json.dumps(COMPLAINT), headers=_bearer(TOKEN),
                           content_type="application/json; charset=utf-8")
    assert accepted.status_code == 200 and _reader(sample_engine)[1] == "complained"


def _path(rule, values: dict[str, str]) -> str:
    path = rule.rule
    for name in rule.arguments:
        path = re.sub(rf"<(?:[^:>]+:)?{name}>", values.get(name, "x"), path)
    return path


def test_no_route_that_changes_anything_takes_a_cross_site_simple_request(sample_engine, settings):
    """Every route of the app's map with a method that may change something, with the
    strongest ambient credential a browser has (loopback while no token is set, a cached
    basic login while one is), a real reader's links, and each simple body: refused (403)
    whenever the browser marks the request as another site's."""
    settings = settings.model_copy(update={"ses_topic_arn": "arn:aws:sns:eu-west-1:123456789012:bounces",
                                           "public_url": "https://news.example"})
    sent_editions(sample_engine, [ANNA])
    reader_id, _, regions = _reader(sample_engine)
    secret = settings.secret_key.get_secret_value()
    values = {"token": manage_token(secret, reader_id, _link_key(sample_engine)), "key": "weekly-2025-W05", "action": "approve", "code": "RU"}
    clients = [(web_client(sample_engine, settings), {}),
               (web_client(sample_engine, settings, TOKEN), _basic("operator", TOKEN))]
    # A named operator's cached basic login too (the console's forms: issue 25).
    from worker.operators.accounts import add_operator

    named = add_operator(sample_engine, "anna")
    clients.append((web_client(sample_engine, settings), _basic("anna", named)))
    # The one route that takes posts from other sites' pages: RFC 8058's one-click, whose only
    # credential is the link itself (another site's page has nothing a server would not have).
    exempt = {("POST", "/unsubscribe/<token>")}
    checked = set()
    for rule in clients[0][0].application.url_map.iter_rules():
        for method in sorted(rule.methods - {"GET", "HEAD", "OPTIONS"}):
            if (method, rule.rule) in exempt:
                continue
            path = _path(rule, values)
            for client, credential in clients:
                for marks in CROSS_SITE:
                    for content_type, body in SIMPLE_BODIES:
                        answer = client.open(path, method=method, data=body, content_type=content_type,
                                             environ_base=LOOPBACK, headers={**credential, **marks,
                                                                             "Host": "127.0.0.1:8000"})
                        if rule.rule == "/subscribe" and "Origin" not in marks and "Referer" not in marks:
                            continue  # the news site's own form is cross-site: judged by its Origin
                        assert answer.status_code == 403, (method, rule.rule, marks, content_type)
            checked.add((method, rule.rule))
    assert {("POST", "/events/bounces"), ("POST", "/events/ses"), ("POST", "/subscribe"),
            ("POST", "/manage/<token>"), ("POST", "/manage/<token>/leave/<code>"), ("POST", "/confirm/<token>"),
            ("POST", "/operator/editions/<key>/<action>"), ("POST", "/operator/subscribers/unsubscribe"),
            ("POST", "/operator/subscribers/resubscribe"), ("POST", "/operator/subscribers/regions"),
            ("POST", "/operator/subscribers/purge"), ("POST", "/operator/subscribers/import"),
            ("POST", "/operator/readers/reactivate")} <= checked
    with session_scope(sample_engine) as session:  # no console action got through, for nobody
        assert session.scalar(sa.text("SELECT count(*) FROM audit_events")) == 0
    assert _reader(sample_engine) == (reader_id, "active", regions) and _bounce_events(sample_engine) == 0
    with session_scope(sample_engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber).where(
            Subscriber.email_key == ANNA.replace("anna", "x"))) == 0


def test_the_one_click_route_taking_other_sites_posts_needs_a_real_link(sample_engine, settings):
    client = web_client(sample_engine, settings)
    reader_id = _reader(sample_engine)[0]
    forged = unsubscribe_token("another-key", reader_id, _link_key(sample_engine))
    answer = client.post(f"/unsubscribe/{forged}", data="List-Unsubscribe=One-Click", environ_base=REMOTE,
                         content_type="application/x-www-form-urlencoded", headers={"Origin": EVIL})
    assert answer.status_code == 400 and _reader(sample_engine)[1] == "active"
