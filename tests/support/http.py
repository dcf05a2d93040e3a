"""A real HTTP server on 127.0.0.1 serving canned responses, counting requests."""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    routes: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    base: str = ""

    def add(self, path: str, body: bytes | str, content_type: str = "application/xml",
            status: int = 200) -> str:
        data = body.encode() if isinstance(body, str) else body
        self.routes[path] = (status, content_type, data)
        return self.base + path


def serve() -> tuple[ThreadingHTTPServer, Served]:
    served = Served()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            served.hits.append(self.path)
            status, ctype, body = served.routes.get(self.path, (404, "text/plain", b"nope"))
            self.send_response(status)
            if status in (301, 302):
                self.send_header("Location", body.decode())
                body = b""
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.base = f"http://127.0.0.1:{server.server_address[1]}"
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
