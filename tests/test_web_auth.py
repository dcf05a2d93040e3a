"""Operator pages need NEWSLETTER_OPERATOR_TOKEN (or, with none set, a loopback client);
readers' pages never do."""

import base64
import re

import pytest
from pydantic import SecretStr

from tests.support.web import LOOPBACK, REMOTE, web_client
from worker.tokens import unsubscribe_token
from worker.web import create_app

OPERATOR_PATHS = ["/", "/?week=2025-W05", "/preview/2025-W05/RU-UA", "/preview/2025-W05/RU-UA/html",
                  "/preview/bogus/RU", "/operator", "/metrics"]
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
    token = unsubscribe_token("test-secret-key", _anna(sample_engine).id)
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
