"""A real SMTP server on 127.0.0.1 (aiosmtpd) with a scriptable fault plan.

The plan says, per recipient and per command, what the server answers:
`plan.rcpt["x@y"] = "550 5.1.1 no such user"`, `plan.data["x@y"] = "drop"`,
`plan.greeting = "421 4.3.2 try later"`, `plan.auth = "535 5.7.8 bad credentials"` ...
Every message the server accepted is kept in `server.received`.
"""

from __future__ import annotations

import asyncio
import email
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email import policy

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt: str
    data: bytes
    at: float

    @property
    def message(self):
        return email.message_from_bytes(self.data, policy=policy.default)


@dataclass
class FaultPlan:
    greeting: str | None = None          # reply instead of 220, then close
    mail: str | None = None              # reply to MAIL FROM
    rcpt: dict[str, str] = field(default_factory=dict)   # recipient -> reply
    # recipient -> reply after the final ".", or "drop" (close without a reply),
    # or "hang" (never reply), or "drop-before-end" (close while reading content), or "crash"
    # (the handler raises: aiosmtpd answers 500 and, unlike a clean reply, keeps the envelope)
    data: dict[str, str] = field(default_factory=dict)
    data_all: str | None = None          # the same for every recipient
    auth: str | None = None              # reply to AUTH
    close_after_each: bool = False       # close the connection after each accepted message
    delay: float = 0.0                   # seconds before answering each end of data
    # throttle: after this many accepted messages within `throttle_window` s, answer 421/454
    throttle_after: int | None = None
    throttle_window: float = 60.0
    throttle_reply: str = "421 4.7.0 too many messages, slow down"
    # the first N attempts for a recipient get `flaky_reply`, then it is accepted
    flaky: dict[str, int] = field(default_factory=dict)
    flaky_reply: str = "451 4.3.0 temporary failure"
    # Advertise PIPELINING (RFC 2920), as Postfix and most relays do.
    pipelining: bool = True
    # Advertise SMTPUTF8 (RFC 6531) in the EHLO reply.
    smtputf8: bool = True
    # Connections beyond this many at once are greeted with `crowded_reply` and closed.
    max_connections: int | None = None
    crowded_reply: str = "421 4.7.0 too many connections from your address"


class _Handler:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(self, smtp, session, envelope, hostname, responses):  # noqa: N802
        session.host_name = hostname
        if self.server.plan.pipelining:
            responses.insert(-1, "250-PIPELINING")
        if not self.server.plan.smtputf8:
            responses = [r for r in responses if "SMTPUTF8" not in r.upper()]
            responses[-1] = "250 " + responses[-1][4:]
        return responses

    async def handle_MAIL(self, smtp, session, envelope, address, mail_options):  # noqa: N802
        plan = self.server.plan
        if plan.mail:
            return plan.mail
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, smtp, session, envelope, address, rcpt_options):  # noqa: N802
        plan = self.server.plan
        self.server.attempts[address] += 1
        if plan.rcpt.get(address) == "tarpit":
            # Drip continuation lines forever: each line is prompt, the reply never ends.
            while True:
                await smtp.push("451-please wait")
                await asyncio.sleep(0.2)
        if address in plan.rcpt:
            return plan.rcpt[address]
        if plan.flaky.get(address, 0) >= self.server.attempts[address]:
            return plan.flaky_reply
        if plan.throttle_after is not None:
            now = time.monotonic()
            recent = [r for r in self.server.received if now - r.at < plan.throttle_window]
            if len(recent) >= plan.throttle_after:
                self.server.throttled += 1
                return plan.throttle_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp, session, envelope):  # noqa: N802
        plan = self.server.plan
        rcpt = envelope.rcpt_tos[0]
        action = plan.data.get(rcpt, plan.data_all)
        if plan.delay:
            await asyncio.sleep(plan.delay)
        if action == "drop":
            # The whole message arrived; the client never hears back.
            self.server.dropped.append(Received(envelope.mail_from, rcpt, envelope.original_content, time.monotonic()))
            smtp.transport.close()
            return "250 never sent"
        if action == "hang":
            await asyncio.sleep(3600)
        if action == "crash":
            raise FileNotFoundError("maildir/tmp is missing")
        if action:
            return action
        self.server.received.append(Received(envelope.mail_from, rcpt, envelope.original_content, time.monotonic()))
        if plan.close_after_each:
            asyncio.get_running_loop().call_later(0.05, smtp.transport.close)
        return "250 2.0.0 queued"


class _FaultySMTP(SMTP):
    def connection_made(self, transport):
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # aiosmtpd answers after a 40 ms Nagle delay otherwise.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)

    def connection_lost(self, error):
        server = self.event_handler.server
        with server.lock:
            server.live.discard(self)
        super().connection_lost(error)

    async def _handle_client(self):
        server = self.event_handler.server
        server.connections += 1
        with server.lock:
            server.live.add(self)
            crowded = server.plan.max_connections is not None and len(server.live) > server.plan.max_connections
            if crowded:
                server.crowded += 1
            else:
                server.most_open = max(server.most_open, len(server.live))
        greeting = server.plan.crowded_reply if crowded else server.plan.greeting
        if greeting:
            await self.push(greeting)
            self.transport.close()
            return
        await super()._handle_client()


class _Controller(Controller):
    def __init__(self, server: SmtpServer, **kwargs) -> None:
        self._server = server
        super().__init__(_Handler(server), hostname="127.0.0.1", port=server.port, **kwargs)

    def factory(self):
        kwargs = dict(self.SMTP_kwargs)
        kwargs.setdefault("enable_SMTPUTF8", True)
        return _FaultySMTP(self.handler, hostname="mx.test", **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SmtpServer:
    def __init__(self, *, tls_context=None, require_starttls=False, auth: dict[str, str] | None = None,
                 implicit_tls=None) -> None:
        """`tls_context` offers STARTTLS; `implicit_tls` (a server context) speaks TLS from the first byte."""
        self.plan = FaultPlan()
        self.received: list[Received] = []
        self.dropped: list[Received] = []
        self.attempts: Counter[str] = Counter()
        self.connections = 0
        self.throttled = 0
        self.live: set = set()    # connections open now
        self.most_open = 0        # the most connections served at once
        self.crowded = 0          # connections refused by plan.max_connections
        self.auth_attempts: list[tuple[str, str]] = []
        self.port = _free_port()
        kwargs = {}
        if tls_context is not None:
            kwargs.update(tls_context=tls_context, require_starttls=require_starttls)
        if auth is not None:
            # aiosmtpd's auth_require_tls means STARTTLS: an implicit TLS connection is already encrypted.
            kwargs.update(authenticator=self._authenticator(auth), auth_require_tls=tls_context is not None)
        self.lock = threading.Lock()
        self._controller = _Controller(self, ssl_context=implicit_tls, **kwargs)

    def _authenticator(self, users: dict[str, str]):
        def check(server, session, envelope, mechanism, data):
            if not isinstance(data, LoginPassword):
                return AuthResult(success=False, handled=False)
            user, password = data.login.decode(), data.password.decode()
            self.auth_attempts.append((user, password))
            return AuthResult(success=users.get(user) == password and self.plan.auth is None,
                              handled=False)
        return check

    def start(self) -> SmtpServer:
        self._controller.start()
        self.connections = self.most_open = 0  # the controller's own readiness probe is not a client
        return self

    def stop(self) -> None:
        if self._controller._thread is not None:
            self._controller.stop()

    def count_for(self, rcpt: str) -> int:
        return sum(1 for r in self.received if r.rcpt == rcpt)

    def by_recipient(self) -> Counter[str]:
        return Counter(r.rcpt for r in self.received)


def arrivals_over_rate(times, *, rate: float, allowance: float) -> list[tuple[float, int, float]]:
    """Windows of arrivals holding more than `rate * seconds + allowance` messages.

    Checks every window [t_i, t_j] between two arrival times (sorted), so every window
    of any length: a window holds no more messages than the window from its first to its
    last arrival, which is no longer. Returns (start, messages, seconds) of each window
    over the bound, worst first; empty when the bound holds everywhere.
    """
    times = sorted(times)
    over = []
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            span = times[j] - start
            if j - i + 1 > rate * span + allowance:
                over.append((start, j - i + 1, span))
    return sorted(over, key=lambda w: w[1] - rate * w[2], reverse=True)
