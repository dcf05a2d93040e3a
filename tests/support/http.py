"""A real HTTP(S) server on 127.0.0.1 serving canned responses, counting requests."""

from __future__ import annotations

import ssl
import sys
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Route:
    status: int
    content_type: str
    body: bytes
    # Seconds between bytes of the whole response (status line and headers too): a server
    # that is alive but never done.
    drip: float = 0.0
    # More header lines, as sent (Content-Encoding for a compressed body, say).
    headers: tuple[tuple[str, str], ...] = ()


@dataclass
class Served:
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    base: str = ""

    def add(self, path: str, body: bytes | str, content_type: str = "application/xml",
            status: int = 200, *, drip: float = 0.0, headers: dict[str, str] | None = None) -> str:
        """For a 3xx status, body is the Location header, sent byte for byte."""
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = Route(status, content_type, data, drip, tuple((headers or {}).items()))
        return self.base + path


def _response(route: Route) -> bytes:
    body, location = route.body, b""
    if 300 <= route.status < 400:
        body, location = b"", b"Location: " + route.body + b"\r\n"
    head = (f"HTTP/1.1 {route.status} {HTTPStatus(route.status).phrase}\r\n"
            f"Content-Type: {route.content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n").encode()
    head += b"".join(f"{name}: {value}\r\n".encode() for name, value in route.headers)
    return head + location + b"\r\n" + body


def serve(*, tls: ssl.SSLContext | None = None) -> tuple[ThreadingHTTPServer, Served]:
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            served.hits.append(self.path)
            route = served.routes.get(self.path, Route(404, "text/plain", b"nope"))
            raw = _response(route)
            try:
                if not route.drip:
                    self.wfile.write(raw)
                for n in range(len(raw) if route.drip else 0):
                    self.wfile.write(raw[n:n + 1])
                    self.wfile.flush()
                    time.sleep(route.drip)
            except OSError:
                pass  # the client gave up, as it should

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    scheme = "https" if tls else "http"
    served.base = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return server, served


class ConnectionLog:
    """Records every socket connect in this process while active (audit hooks cannot be removed)."""

    _installed = False
    _active: list[ConnectionLog] = []

    def __init__(self) -> None:
        self.addresses: list[object] = []
        if not ConnectionLog._installed:
            sys.addaudithook(ConnectionLog._hook)
            ConnectionLog._installed = True

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        if event == "socket.connect" and ConnectionLog._active:
            for log in ConnectionLog._active:
                log.addresses.append(args[1])

    def __enter__(self) -> ConnectionLog:
        ConnectionLog._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        ConnectionLog._active.remove(self)
