"""SMTP over smtplib: one recipient per transaction over one reused connection.

The steps of a transaction are driven one by one (MAIL, RCPT, DATA, the
content, the final reply) because the outcome depends on *where* a failure
happens: a connection lost before the final "." is a plain temporary
failure, one lost after it is ambiguous (the server may have queued the
message) and must never be retried.
"""

from __future__ import annotations

import functools
import re
import smtplib
import socket
import ssl
import time
from dataclasses import replace

from worker import metrics
from worker.delivery.outcome import Outcome, Outgoing, SendResult, classify
from worker.settings import Settings

PLAIN_AUTH_REFUSED = ("refusing to send the SMTP password over a connection without TLS: set "
                      "NEWSLETTER_SMTP_SECURITY=starttls or tls (or NEWSLETTER_SMTP_ALLOW_PLAIN_AUTH=true "
                      "for a relay on this host)")
# quoteaddr parses the address each time. A fixed sender is cached; a VERP sender differs
# per message, and one that is a plain addr-spec (all that worker/bounces/verp.py makes)
# needs no parsing to be quoted the same way.
_quote_fixed_sender = functools.lru_cache(maxsize=16)(smtplib.quoteaddr)
_PLAIN_ADDR_SPEC = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@[A-Za-z0-9.-]{1,253}").fullmatch


def _quote_sender(sender: str) -> str:
    return f"<{sender}>" if _PLAIN_ADDR_SPEC(sender) else _quote_fixed_sender(sender)


class _ReplyDeadline:
    """A reply must be complete within the timeout, not just each line of it: a tarpit
    that drips '451-wait' continuation lines would otherwise hold a worker forever
    (smtplib's timeout is per socket read).

    The adapter relies on one detail of smtplib (CPython 3.8 to 3.13, checked by
    tests/test_library_contracts.py): `SMTP.getreply` reads each line with
    `self.file.readline()`, `self.file` being made from the socket when it is None.
    So the file is wrapped, and every line read checks the reply's deadline.
    """

    def __init__(self, raw, owner) -> None:
        self.raw, self.owner = raw, owner

    def readline(self, limit: int = -1) -> bytes:
        if time.monotonic() > self.owner.reply_deadline:
            raise TimeoutError(f"reply not complete within {self.owner.timeout:g} s")
        return self.raw.readline(limit)

    def close(self) -> None:
        self.raw.close()


class _DeadlineMixin:
    reply_deadline = float("inf")

    def getreply(self):
        if not isinstance(self.file, _ReplyDeadline):
            self.file = _ReplyDeadline(self.sock.makefile("rb"), self)
        self.reply_deadline = time.monotonic() + (self.timeout or 30)
        return super().getreply()


class _SMTP(_DeadlineMixin, smtplib.SMTP):
    pass


class _SMTPS(_DeadlineMixin, smtplib.SMTP_SSL):
    pass


class SmtpSender:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: smtplib.SMTP | None = None
        self._sent_on_conn = 0

    # -- connection -------------------------------------------------------
    def _connect(self) -> SendResult | None:
        """Open, secure and authenticate a connection; a SendResult if that failed."""
        s = self.settings
        if s.smtp_username and s.smtp_security == "none" and not s.smtp_allow_plain_auth:
            # Refused before connecting: the password must never cross a connection without TLS.
            return SendResult(Outcome.SENDER, None, PLAIN_AUTH_REFUSED, connection_failed=True)
        context = ssl.create_default_context()  # verifies certificates and host names
        try:
            if s.smtp_security == "tls":
                conn: smtplib.SMTP = _SMTPS(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                                                      context=context, local_hostname=_helo(s))
            else:
                conn = _SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout,
                                    local_hostname=_helo(s))
        except smtplib.SMTPConnectError as exc:  # a 4xx/5xx greeting
            code = exc.smtp_code
            outcome = Outcome.SENDER if code >= 500 else Outcome.TEMPORARY
            return SendResult(outcome, code, _text(exc.smtp_error), connection_failed=True)
        except ssl.SSLError as exc:
            return _tls_failure(exc)
        except (OSError, smtplib.SMTPException) as exc:
            return _connection_failed(s, exc)
        try:
            conn.ehlo()
            if s.smtp_security == "starttls":
                if not conn.has_extn("starttls"):
                    conn.close()
                    # Fail closed: never fall back to clear text, never send credentials.
                    return SendResult(Outcome.SENDER, None,
                                      "server does not offer STARTTLS (NEWSLETTER_SMTP_SECURITY=starttls)",
                                      connection_failed=True)
                conn.starttls(context=context)
                conn.ehlo()
            if s.smtp_username:
                conn.login(s.smtp_username, s.smtp_password.get_secret_value())
        except ssl.SSLError as exc:
            conn.close()
            return _tls_failure(exc)
        except smtplib.SMTPAuthenticationError as exc:
            conn.close()
            return SendResult(Outcome.SENDER, exc.smtp_code, f"authentication failed: {_text(exc.smtp_error)}",
                              connection_failed=True)
        except smtplib.SMTPResponseException as exc:
            conn.close()
            outcome = Outcome.TEMPORARY if exc.smtp_code < 500 else Outcome.SENDER
            return SendResult(outcome, exc.smtp_code, _text(exc.smtp_error), connection_failed=True)
        except (OSError, smtplib.SMTPException) as exc:
            conn.close()
            return _connection_failed(s, exc)
        self._conn = conn
        self._sent_on_conn = 0
        metrics.count_connection()
        return None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.quit()
            except (OSError, smtplib.SMTPException):
                self._conn.close()
            self._conn = None

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def probe(self, envelope_from: str) -> SendResult | None:
        """Does the relay take mail again? Connect (greeting, TLS, login) and ask MAIL FROM,
        then reset and quit without a recipient: nothing is sent. None if it answered 250."""
        failure = self._connect()
        if failure is not None:
            return failure
        conn = self._conn
        assert conn is not None
        try:
            code, reply = conn.mail(envelope_from)
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            return SendResult(Outcome.TEMPORARY, None, f"connection lost at MAIL FROM: {_describe(exc)}")
        result = None if code == 250 else SendResult(classify(code, _text(reply), stage="mail"), code, _text(reply))
        self._reset()
        self.close()
        return result

    def open(self) -> SendResult | None:
        """A connection ready for the next message: None, or why the relay would not have us.
        A lane asks before it claims a row, so a refused conversation costs the row nothing."""
        self._close_if_spent()
        return self._connect() if self._conn is None else None

    def _close_if_spent(self) -> None:
        # A connection carries NEWSLETTER_SMTP_MAX_PER_CONNECTION messages, then a new one is opened.
        if self._conn is not None and self._sent_on_conn >= self.settings.smtp_max_per_connection:
            self.close()

    # -- one transaction ----------------------------------------------------
    def send(self, message: Outgoing) -> SendResult:
        self._close_if_spent()
        for attempt in (1, 2):
            if self._conn is None:
                failure = self._connect()
                if failure is not None:
                    return failure
            started = time.perf_counter()
            result = self._transaction(message, reused=attempt == 1)
            if result is not None:
                seconds = time.perf_counter() - started
                metrics.observe_smtp_transaction(seconds)
                return replace(result, seconds=seconds)
            # The reused connection had been closed by the server before MAIL:
            # nothing was sent, so one fresh connection is safe.
        return SendResult(Outcome.TEMPORARY, None, "connection closed twice before MAIL FROM")

    def _transaction(self, message: Outgoing, *, reused: bool) -> SendResult | None:
        conn = self._conn
        assert conn is not None
        options = []
        if message.smtputf8:
            if not conn.has_extn("smtputf8"):
                if reused and self._sent_on_conn > 0:
                    # What a reused connection's EHLO said may be out of date (the relay was
                    # reconfigured since): a permanent verdict waits for a fresh EHLO.
                    self._drop()
                    return None
                return SendResult(Outcome.REJECTED, None,
                                  "recipient needs SMTPUTF8, which the server does not offer")
            options = ["SMTPUTF8", "BODY=8BITMIME"]
        if conn.has_extn("pipelining"):
            return self._pipelined(conn, message, options, reused=reused)
        try:
            code, reply = conn.mail(message.sender, options)
        except (smtplib.SMTPServerDisconnected, ConnectionError) as exc:
            self._drop()
            if reused and self._sent_on_conn > 0:
                return None  # idle connection closed by the server: reconnect once
            return SendResult(Outcome.TEMPORARY, None, f"connection lost at MAIL FROM: {_describe(exc)}")
        except OSError as exc:
            self._drop()
            return SendResult(Outcome.TEMPORARY, None, f"MAIL FROM: {_describe(exc)}")
        if code != 250:
            return self._refused(code, reply, stage="mail")
        stage = "rcpt"
        try:
            code, reply = conn.rcpt(message.recipient, [])
            if code not in (250, 251):
                return self._refused(code, reply, stage="rcpt")
            stage = "data"
            code, reply = conn.docmd("DATA")
            if code != 354:
                return self._refused(code, reply, stage="data")
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            return SendResult(Outcome.TEMPORARY, None, f"connection lost at {stage}: {_describe(exc)}")
        return self._content(conn, message)

    def _pipelined(self, conn: smtplib.SMTP, message: Outgoing, options: list[str], *,
                   reused: bool) -> SendResult | None:
        """MAIL, RCPT and DATA in one write, their three replies read in order (RFC 2920):
        one round trip to the relay where there were three."""
        opts = "".join(" " + o for o in options)
        commands = (f"MAIL FROM:{_quote_sender(message.sender)}{opts}\r\n"
                    f"RCPT TO:{smtplib.quoteaddr(message.recipient)}\r\n"
                    "DATA\r\n").encode("utf-8" if message.smtputf8 else "ascii")
        try:
            conn.send(commands)
            mail = conn.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            if reused and self._sent_on_conn > 0:
                return None  # idle connection closed by the server: nothing was sent, reconnect once
            return SendResult(Outcome.TEMPORARY, None, f"connection lost at MAIL FROM: {_describe(exc)}")
        try:
            rcpt = conn.getreply()
            data = conn.getreply()
            if data[0] == 354 and (mail[0] != 250 or rcpt[0] not in (250, 251)):
                # The server opened a message for nobody: close it empty, then reset.
                conn.send(b".\r\n")
                conn.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            self._drop()
            return SendResult(Outcome.TEMPORARY, None, f"connection lost at rcpt: {_describe(exc)}")
        for (code, reply), stage, ok in ((mail, "mail", (250,)), (rcpt, "rcpt", (250, 251)),
                                         (data, "data", (354,))):
            if code not in ok:
                return self._refused(code, reply, stage=stage)
        return self._content(conn, message)

    def _content(self, conn: smtplib.SMTP, message: Outgoing) -> SendResult:
        """After 354: the message, the final '.', and the one reply that decides."""
        # Dot-stuffing (RFC 5321 4.5.2); bytes.replace is C, a regex over 40 KB is not.
        payload = message.data.replace(b"\r\n.", b"\r\n..")
        if payload.startswith(b"."):
            payload = b"." + payload
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        try:
            conn.send(payload + b".\r\n")
        except (OSError, smtplib.SMTPException) as exc:
            # Before the final "." was written: the server cannot have taken it.
            self._drop()
            return SendResult(Outcome.TEMPORARY, None, f"connection lost at data: {_describe(exc)}")
        try:
            code, reply = conn.getreply()
        except (OSError, smtplib.SMTPException) as exc:
            # After the final ".": the server may have queued it. Ambiguous.
            self._drop()
            return SendResult(Outcome.UNKNOWN, None, f"no reply after end of data: {_describe(exc)}")
        self._sent_on_conn += 1
        if code == 250:
            return SendResult(classify(code, _text(reply), stage="eom"), code, _text(reply))
        # The transaction is over, but a server whose handler failed may still hold the
        # envelope (aiosmtpd does) and refuse the next MAIL as nested: start clean.
        return self._refused(code, reply, stage="eom")

    def _refused(self, code: int, reply: bytes | str, *, stage: str) -> SendResult:
        """A reply that ends the transaction: the connection reset (or, on 421, closed, as
        the server is closing it), and the reply classified for its stage."""
        if code == 421:
            self._drop()
        else:
            self._reset()
        return SendResult(classify(code, _text(reply), stage=stage), code, _text(reply))

    def _reset(self) -> None:
        if self._conn is None:
            return
        try:
            self._conn.rset()
        except (OSError, smtplib.SMTPException):
            self._drop()


def _helo(settings: Settings) -> str:
    # Settings decide (NEWSLETTER_EHLO_NAME, else a fully qualified host name, else the
    # From domain); gethostname needs no DNS lookup, where getfqdn may stall on a resolver.
    return settings.helo_name


def _text(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:500]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _connection_failed(settings: Settings, exc: BaseException) -> SendResult:
    # Which relay: a refused or unresolvable one is most often a wrong host or port.
    return SendResult(Outcome.TEMPORARY, None,
                      f"connection failed to {settings.smtp_host}:{settings.smtp_port}: {_describe(exc)}",
                      connection_failed=True)


def _tls_failure(exc: ssl.SSLError) -> SendResult:
    reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    return SendResult(Outcome.SENDER, None, f"TLS failed: {reason}", connection_failed=True)
