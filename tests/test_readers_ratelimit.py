"""Rate limits on POST /subscribe: per client and for everyone, counted in a real Redis that
every web process shares (here two app instances, and a real gunicorn with two workers)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.test_readers_signup import Readers, for_readers
from worker.store.db import create_db_engine, upgrade_schema
from worker.web.ratelimit import client_address

NEWSLETTER = str(Path(sys.executable).parent / "newsletter")


def _ip(n: int) -> dict:
    return {"REMOTE_ADDR": f"203.0.113.{n}"}


def test_one_client_gets_its_share_and_no_more(engine, settings):
    readers = Readers(engine, for_readers(settings, subscribe_limit_per_ip="3/minute"))
    codes = [readers.subscribe(f"r{n}@example.org", environ_base=_ip(1)).status_code for n in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    refused = readers.subscribe("r9@example.org", environ_base=_ip(1))
    assert 1 <= int(refused.headers["Retry-After"]) <= 60 and "try again in 1 minute" in refused.text
    # An operator trying the form by hand learns which budget and setting; nobody learns its numbers.
    assert ("(If you run this site: the limit of sign-ups from your address was reached; "
            "NEWSLETTER_SUBSCRIBE_LIMIT_PER_IP sets it.)") in refused.text
    assert "3/minute" not in refused.text and "3 per" not in refused.text
    assert readers.row("r9@example.org") is None
    as_json = readers.client.post("/subscribe", json={"email": "r9@example.org", "regions": "RU"}, environ_base=_ip(1))
    assert as_json.status_code == 429 and "Too many sign-ups" in as_json.json["error"]
    assert readers.subscribe("other@example.org", environ_base=_ip(2)).status_code == 200
    assert len(readers.mails()) == 4


def test_all_clients_together_have_a_ceiling(engine, settings):
    readers = Readers(engine, for_readers(settings, subscribe_limit_global="4/minute"))
    codes = [readers.subscribe(f"r{n}@example.org", environ_base=_ip(n)).status_code for n in range(6)]
    assert codes == [200] * 4 + [429] * 2
    refused = readers.client.post("/subscribe", json={"email": "r9@example.org", "regions": "RU"},
                                  environ_base=_ip(9))
    assert refused.json["error"] == (
        "Too many sign-ups just now: please try again in 1 minute. (If you run this site: the limit of sign-ups "
        "from everyone together was reached; NEWSLETTER_SUBSCRIBE_LIMIT_GLOBAL sets it.)")


def test_every_process_shares_the_count(engine, settings):
    limited = for_readers(settings, subscribe_limit_per_ip="4/minute")
    one, two = Readers(engine, limited), Readers(engine, limited)  # as two gunicorn workers would
    codes = [(one if n % 2 else two).subscribe(f"r{n}@example.org", environ_base=_ip(1)).status_code
             for n in range(6)]
    assert codes == [200] * 4 + [429] * 2


def test_forwarded_addresses_count_only_behind_trusted_proxies(engine, settings):
    direct = Readers(engine, for_readers(settings, subscribe_limit_per_ip="2/minute"))
    for n in range(2):
        direct.subscribe(f"r{n}@example.org", environ_base=_ip(1), headers={"X-Forwarded-For": f"198.51.100.{n}"})
    # Without trusted proxies a client cannot get more by writing the header itself.
    assert direct.subscribe("r3@example.org", environ_base=_ip(1),
                            headers={"X-Forwarded-For": "198.51.100.77"}).status_code == 429
    proxied = Readers(engine, for_readers(settings, subscribe_limit_per_ip="2/minute", trusted_proxies=1))
    proxy = {"REMOTE_ADDR": "10.0.0.1"}
    codes = [proxied.subscribe(f"p{n}@example.org", environ_base=proxy,
                               headers={"X-Forwarded-For": f"1.2.3.4, 198.51.100.{n % 2}"}).status_code
             for n in range(5)]
    assert codes == [200, 200, 200, 200, 429]  # two clients behind one proxy, two each


def test_client_addresses_group_ipv6_by_64():
    class _Request:
        def __init__(self, addr, xff=""):
            self.remote_addr, self.headers = addr, {"X-Forwarded-For": xff} if xff else {}

    assert client_address(_Request("2001:db8:1:2:aaaa::1"), 0) == "2001:db8:1:2::/64"
    assert client_address(_Request("2001:db8:1:2:bbbb::9"), 0) == "2001:db8:1:2::/64"
    assert client_address(_Request("::ffff:203.0.113.9"), 0) == "203.0.113.9"
    assert client_address(_Request("10.0.0.1", "evil, 203.0.113.5"), 1) == "203.0.113.5"
    assert client_address(_Request("10.0.0.1", "203.0.113.5"), 2) == "10.0.0.1"  # fewer hops than proxies
    assert client_address(_Request("10.0.0.1", "not an ip"), 1) == "not an ip"


def test_without_redis_sign_up_refuses_rather_than_mail_without_limits(engine, settings):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    readers = Readers(engine, for_readers(settings, ratelimit_url=f"redis://127.0.0.1:{port}/0"))
    page = readers.subscribe()
    assert page.status_code == 503 and "try again in a few minutes" in page.text
    assert readers.row() is None and readers.mails() == []


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_gunicorn_workers_share_one_limit(db_url, settings, tmp_path):
    engine = create_db_engine(db_url)
    upgrade_schema(engine)
    engine.dispose()
    limited = for_readers(settings)  # empties the rate-limit database
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env.update({"NEWSLETTER_DATABASE_URL": db_url, "NEWSLETTER_SECRET_KEY": "k",
                "NEWSLETTER_RATELIMIT_URL": limited.ratelimit_url, "NEWSLETTER_SUBSCRIBE_LIMIT_PER_IP": "5/minute",
                "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox")})
    log = open(tmp_path / "gunicorn.log", "ab")
    proc = subprocess.Popen([NEWSLETTER, "serve", "--port", str(port), "--workers", "3"], env=env, cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.1)
        codes = []
        for n in range(12):
            # A new connection each time: the kernel spreads them over the workers.
            with httpx.Client(timeout=5) as client:
                codes.append(client.post(base + "/subscribe",
                                         data={"email": f"r{n}@example.org", "regions": "RU"}).status_code)
        assert codes == [200] * 5 + [429] * 7
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
