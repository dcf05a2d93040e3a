"""Connections for fetching feeds: only to addresses checked when connecting, only until a deadline.

httpx takes the transport; httpcore takes the network backend, which is where a host name
becomes an address and a socket. Checking there covers every spelling of an address
(`127.1`, `2130706433`, `[::ffff:127.0.0.1]`), names that resolve inward (`localhost`), and
every redirect hop, since each new origin is a new connection. The socket is opened to the
very address that was checked, so a second DNS answer cannot swap it (DNS rebinding), while
the Host header and TLS (SNI and certificate) keep the name from the URL.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpcore
import httpx

from worker.redact import mask_httpx_log

T = TypeVar("T")


class RefusedAddress(Exception):
    """The host resolved to an address that feeds are not fetched from."""


class DeadlinePassed(Exception):
    """The fetch as a whole, redirects included, took longer than allowed."""


class ResolveTimeout(httpcore.ConnectTimeout):
    """No DNS answer within the read timeout."""


# Prefixes whose addresses carry an IPv4 address that a translator or tunnel delivers to:
# `is_global` judges the IPv6 prefix, not the IPv4 host behind it. NAT64's well-known and
# local-use prefixes (RFC 6052, RFC 8215) carry it in the last 32 bits, as DNS64 writes it.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# The local-use one is not globally reachable (IANA's special-purpose registry; Python 3.11's
# is_global says it is, later ones say it is not), and where its IPv4 sits depends on the
# site's prefix length: never public, whatever its last 32 bits say.
_NAT64_LOCAL = _NAT64[1]
# IPv4-compatible (::a.b.c.d, deprecated) and IPv4-translated (::ffff:0:a.b.c.d, SIIT).
_LAST_32 = (ipaddress.IPv6Network("::/96"), ipaddress.IPv6Network("::ffff:0:0:0/96"))


def embedded_ipv4(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address reaches: mapped, compatible, translated, NAT64, 6to4
    (2002::/16) and Teredo (2001::/32: its server and its client, de-obfuscated)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return []
    if ip.ipv4_mapped is not None:
        return [ip.ipv4_mapped]
    if ip.sixtofour is not None:
        return [ip.sixtofour]
    if ip.teredo is not None:
        return list(ip.teredo)
    if any(ip in net for net in (*_NAT64, *_LAST_32)) and ip not in (ipaddress.IPv6Address("::"),
                                                                       ipaddress.IPv6Address("::1")):
        return [ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)]
    return []


def is_public(address: str) -> bool:
    """True for a globally routable address; loopback, private, link-local, reserved and the
    like are not, nor an IPv6 address that embeds an IPv4 address that is not."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # ::ffff:a.b.c.d is the IPv4 host a.b.c.d itself (is_global says no to the whole prefix).
        return ip.ipv4_mapped.is_global
    if ip in _NAT64_LOCAL:
        return False
    return ip.is_global and all(v4.is_global for v4 in embedded_ipv4(ip))


def refusal(host: str, address: str) -> str | None:
    """Why a connection to `address` (what `host` resolved to) is refused, or None if it is public."""
    if is_public(address):
        return None
    where = host if address == host else f"{host} ({address})"
    inner = [str(v4) for v4 in embedded_ipv4(ipaddress.ip_address(address)) if not v4.is_global]
    embeds = f", which embeds {', '.join(inner)}" if inner and inner[0] not in (host, address) else ""
    return (f"refused to connect to {where}{embeds}: not a public address "
            "(set NEWSLETTER_FETCH_ALLOW_PRIVATE=true to fetch feeds from internal addresses)")


def check_host(host: str, port: int, *, timeout: float) -> None:
    """Raise RefusedAddress if `host` resolves to an address a fetch would refuse (`sources add`
    says so at once instead of the poller backing the source off). httpcore.ConnectError when
    it does not resolve."""
    for address in dict.fromkeys(info[4][0] for info in _resolve(host, port, timeout)):
        reason = refusal(host, address)
        if reason:
            raise RefusedAddress(reason)


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def run(self, timeout: float | None, call: Callable[[float], T]) -> T:
        """call(t) with its own timeout shortened to what is left of the whole."""
        left = self.end - time.monotonic()
        if left <= 0:
            raise DeadlinePassed(f"took longer than {self.seconds:g} s")
        try:
            return call(left if timeout is None else min(timeout, left))
        except httpcore.TimeoutException:
            if time.monotonic() >= self.end:
                raise DeadlinePassed(f"took longer than {self.seconds:g} s") from None
            raise


class _Stream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._deadline.run(timeout, lambda t: self._stream.read(max_bytes, t))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._deadline.run(timeout, lambda t: self._stream.write(buffer, t))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        tls = self._deadline.run(timeout, lambda t: self._stream.start_tls(ssl_context, server_hostname, t))
        return _Stream(tls, self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's own sockets, opened only to checked addresses and only until the deadline."""

    def __init__(self, *, allow_private: bool, deadline: float) -> None:
        self._allow_private = allow_private
        self._deadline = _Deadline(deadline)

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None, socket_options: Any = None) -> httpcore.NetworkStream:
        found = self._deadline.run(timeout, lambda t: _resolve(host, port, t))
        addresses = list(dict.fromkeys(info[4][0] for info in found))
        if not self._allow_private:
            # One inward answer refuses the name: a name pointing both out and in is a rebinding setup.
            for address in addresses:
                reason = refusal(host, address)
                if reason:
                    raise RefusedAddress(reason)
        connect = super().connect_tcp
        error = httpcore.ConnectError(f"no address for {host}")
        for address in addresses:
            try:
                stream = self._deadline.run(
                    timeout, lambda t, a=address: connect(a, port, t, local_address, socket_options))
            except httpcore.ConnectError as exc:
                error = exc  # try the host's next address, as socket.create_connection would
                continue
            return _Stream(stream, self._deadline)
        raise error


def _resolve(host: str, port: int, timeout: float) -> list:
    """getaddrinfo, given up after `timeout`. The C resolver has no timeout of its own to
    pass; resolv.conf's can add up to minutes. A lookup given up on goes on in its daemon
    thread until the resolver ends it, and its answer is dropped."""
    answer: list = []

    def lookup() -> None:
        try:
            answer.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as exc:  # UnicodeError: the idna codec's, for an empty or long label
            answer.append(exc)

    thread = threading.Thread(target=lookup, name="resolve", daemon=True)
    thread.start()
    thread.join(timeout)
    if not answer:
        raise ResolveTimeout(f"cannot resolve {host}: no answer within {timeout:g} s")
    if isinstance(answer[0], Exception):
        raise httpcore.ConnectError(f"cannot resolve {host}: {answer[0]}")
    return answer[0]


class _Body(httpx.SyncByteStream):
    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        yield from self._stream

    def close(self) -> None:
        self._stream.close()


class GuardedTransport(httpx.BaseTransport):
    """httpx's requests over an httpcore pool that connects through a GuardedBackend.

    httpx.HTTPTransport builds its pool without a way to pass a network backend, so this is
    the small part of it a plain GET needs. Errors stay httpcore's.
    """

    def __init__(self, *, allow_private: bool, deadline: float) -> None:
        mask_httpx_log()  # every fetch comes through here: no URL it logs shows credentials
        # httpx's context: certifi's roots, or SSL_CERT_FILE / SSL_CERT_DIR when set.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            network_backend=GuardedBackend(allow_private=allow_private, deadline=deadline),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._pool.handle_request(httpcore.Request(
            method=request.method,
            url=httpcore.URL(scheme=request.url.raw_scheme, host=request.url.raw_host,
                             port=request.url.port, target=request.url.raw_path),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        ))
        return httpx.Response(response.status, headers=response.headers, stream=_Body(response.stream),
                              extensions=response.extensions)

    def close(self) -> None:
        self._pool.close()
