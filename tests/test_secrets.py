"""A full send with canary secrets: logs, task messages in Redis and errors carry none of them."""

import base64
import json
import re
import threading

import pytest
import redis
import sqlalchemy as sa

from tests.support.data import load_stories
from tests.support.smtp import SmtpServer
from worker.store.db import session_scope
from worker.store.models import Subscriber

PASSWORD = "canary-smtp-pass-91b2"
SECRET = "canary-secret-key-5c7d-Qm8Xv2Lt9Rz4"
ADDRESS = "canary.reader.3e8f@example.org"


class RedisTap:
    """Everything Redis is asked to do while active (MONITOR), with kombu bodies decoded."""

    def __init__(self, url):
        self.client = redis.Redis.from_url(url)
        self.lines: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with self.client.monitor() as monitor:
            for command in monitor.listen():
                self.lines.append(command["command"])
                if self._stop.is_set():
                    return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.client.ping()
        self._thread.join(5)

    def text(self) -> str:
        out = list(self.lines)
        for line in self.lines:
            for match in re.finditer(r'"body": "([A-Za-z0-9+/=]+)"', line.replace('\\"', '"')):
                out.append(base64.b64decode(match.group(1)).decode("utf-8", "replace"))
        return "\n".join(out)


@pytest.mark.slow
@pytest.mark.timeout(90)  # two real sends through a worker; a loaded machine took it past 120 s
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_no_canary_reaches_logs_broker_or_errors(engine, tmp_path, start_worker, worker_env, run_cli, redis_url):
    load_stories(engine, tmp_path)
    with session_scope(engine) as session:
        session.add(Subscriber(email=ADDRESS, email_key=ADDRESS, name="Canary", regions="RU UA", status="active"))
    server = SmtpServer(auth={"digest": PASSWORD}).start()
    server.plan.close_after_each = True  # every message logs in again
    env = {**worker_env, "NEWSLETTER_SMTP_PORT": str(server.port), "NEWSLETTER_SMTP_USERNAME": "digest",
           "NEWSLETTER_SMTP_PASSWORD": PASSWORD, "NEWSLETTER_SECRET_KEY": SECRET,
           # The test relay is on this host and speaks no TLS: the operator's explicit opt-in.
           "NEWSLETTER_SMTP_ALLOW_PLAIN_AUTH": "true"}
    try:
        with RedisTap(redis_url) as tap:
            worker = start_worker("w1", **{k: v for k, v in env.items() if k not in ("NEWSLETTER_BATCH_SIZE",)})
            sent = run_cli("send", "--week", "2025-W05", "--wait", env=env)
            assert sent.code == 0, sent.err
            assert server.count_for(ADDRESS) == 1
            # An error path too: the relay refuses our credentials.
            server.plan.auth = "refuse"
            failed = run_cli("send", "--week", "2025-W05", "--force", "--wait", env=env)
        status = run_cli("status", "--json", env=env)
    finally:
        server.stop()
    assert failed.code == 1 and "authentication failed" in failed.err
    assert '"body"' in tap.text()  # the task messages were seen
    haystacks = {"worker log": worker.output(), "redis": tap.text(), "cli": sent.out + sent.err + failed.out +
                 failed.err, "status": status.out}
    for where, text in haystacks.items():
        for canary in (PASSWORD, SECRET, ADDRESS):
            assert canary not in text, f"{canary} found in {where}"
    # Task arguments are ids only.
    bodies = [json.loads(b) for b in re.findall(r"^\[\[.*$", tap.text(), re.M)]
    assert bodies and all(all(isinstance(x, int) or (isinstance(x, list) and all(isinstance(i, int) for i in x))
                              for x in body[0]) for body in bodies)
    with session_scope(engine) as session:
        assert session.scalar(sa.select(Subscriber.status).where(Subscriber.email == ADDRESS)) == "active"
