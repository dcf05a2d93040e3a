"""Read a story source: a local file or an http(s) URL, bounded in time, size and destination."""

from __future__ import annotations

import os
import re
import select
import time
from dataclasses import dataclass
from email.utils import formatdate

import httpcore
import httpx

from worker.ingest.decoding import ACCEPT_ENCODING, BodyRefused, read_body
from worker.ingest.network import DeadlinePassed, GuardedTransport, RefusedAddress, ResolveTimeout, check_host

# A week of a busy site's feed is well under 1 MB; 10 MB leaves room and still
# stops a runaway or hostile response before it eats memory.
MAX_SOURCE_BYTES = 10 * 1024 * 1024
# Per read (and per connect): a live server never goes this long without sending something.
FETCH_TIMEOUT = 20.0
# The whole fetch, redirects included. The per-read timeout never ends a server that
# drips a byte at a time, which would hold an import (or a poll) forever; 10 MB arrives
# in seconds on any working link, so a minute is generous and still ends it.
FETCH_DEADLINE = 60.0
MAX_REDIRECTS = 5

# RFC 3986 scheme; a one-letter one is a Windows drive ("C:\feeds").
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


class SourceError(Exception):
    """The whole source could not be read or parsed; its items were not looked at."""


@dataclass(frozen=True)
class Fetched:
    """A source's content, or None when it has not changed since the validators given
    (HTTP 304, or a file whose size and modification time are the same); and the
    validators to send next time."""

    body: bytes | None
    etag: str | None = None
    last_modified: str | None = None

    @property
    def not_modified(self) -> bool:
        return self.body is None


def read_source(
    source: str,
    *,
    allow_private: bool = False,
    max_bytes: int = MAX_SOURCE_BYTES,
    timeout: float = FETCH_TIMEOUT,
    deadline: float = FETCH_DEADLINE,
) -> bytes:
    body = fetch_source(source, allow_private=allow_private, max_bytes=max_bytes, timeout=timeout,
                        deadline=deadline).body
    assert body is not None  # no validators were given, so nothing can be "not modified"
    return body


def fetch_source(
    source: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    allow_private: bool = False,
    max_bytes: int = MAX_SOURCE_BYTES,
    timeout: float = FETCH_TIMEOUT,
    deadline: float = FETCH_DEADLINE,
) -> Fetched:
    """read_source with conditional GET: with the validators of the last read, an
    unchanged feed costs one request answered 304 and no body. Every bound of
    read_source holds (public addresses only, size cap, per-read timeout, deadline)."""
    scheme = _scheme(source)
    if scheme in ("http", "https"):
        conditional = {}
        if etag:
            conditional["If-None-Match"] = etag
        if last_modified:
            conditional["If-Modified-Since"] = last_modified
        return _fetch_url(source, allow_private=allow_private, max_bytes=max_bytes, timeout=timeout,
                          deadline=deadline, conditional=conditional)
    if len(scheme) > 1:
        raise SourceError(f"unsupported URL scheme {scheme!r}: only http(s) URLs and file paths")
    return _read_file_if_changed(source, max_bytes=max_bytes, last_modified=last_modified, timeout=timeout,
                                 deadline=deadline)


def check_url_destination(url: str, *, allow_private: bool, timeout: float = FETCH_TIMEOUT) -> str | None:
    """For `sources add`: SourceError when every fetch of this http(s) URL would be refused
    (an invalid URL, or a host that resolves to an address that is not public), so it is
    said once, at once, instead of by a poller backing the source off. A host that does not
    resolve now may later: that is a warning, returned."""
    try:
        parsed = httpx.Request("GET", url).url  # as _fetch_url's request parses it (its Host header too)
        host = parsed.raw_host.decode("ascii")
    except (httpx.InvalidURL, ValueError) as exc:  # ValueError: IDNA's, as in _fetch_url
        raise SourceError(f"invalid URL: {exc}") from None
    if not host:
        raise SourceError("invalid URL: no host")
    if allow_private:
        return None
    try:
        check_host(host, parsed.port or (443 if parsed.scheme == "https" else 80), timeout=timeout)
    except RefusedAddress as exc:
        raise SourceError(str(exc)) from None
    except httpcore.ConnectError as exc:  # ResolveTimeout is one too
        return f"{exc}; added anyway, the worker will try it"
    return None


def _read_file_if_changed(path: str, *, max_bytes: int, last_modified: str | None, timeout: float,
                          deadline: float) -> Fetched:
    # A file's validator is its modification time and size: a stat instead of a read.
    try:
        stat = os.stat(path)
        stamp = f"{formatdate(stat.st_mtime, usegmt=True)}; {stat.st_mtime_ns}; {stat.st_size}"
    except (OSError, ValueError):
        stamp = None  # _read_file says why
    if stamp is not None and stamp == last_modified:
        return Fetched(None, None, stamp)
    return Fetched(_read_file(path, max_bytes=max_bytes, timeout=timeout, deadline=deadline), None, stamp)


def _scheme(text: str) -> str:
    match = _SCHEME.match(text)
    return match[1].lower() if match else ""


def _read_file(path: str, *, max_bytes: int, timeout: float, deadline: float) -> bytes:
    # Not stat(): it says 0 bytes for /dev/zero, a FIFO or a /proc file. One byte past
    # the cap is enough to know it is over. Non-blocking, waiting in poll(): a FIFO that
    # nobody writes to would block open() itself, and a slow writer each read, holding an
    # import, or the reconcile tick's poll of a source, for ever. The bounds are a URL's.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise SourceError(f"cannot read file: {exc}") from None
    try:
        return _read_fd(fd, max_bytes=max_bytes, timeout=timeout, deadline=deadline)
    finally:
        os.close(fd)


def _read_fd(fd: int, *, max_bytes: int, timeout: float, deadline: float) -> bytes:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    end = time.monotonic() + deadline
    chunks: list[bytes] = []
    size = 0
    while size <= max_bytes:
        left = end - time.monotonic()
        if left <= 0:
            raise SourceError(f"file not read whole within {deadline:g} s")
        wait = min(timeout, left)
        if not poller.poll(wait * 1000):
            if wait < timeout:
                raise SourceError(f"file not read whole within {deadline:g} s")
            raise SourceError(f"no data from the file for {timeout:g} s")
        try:
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - size))
        except BlockingIOError:
            continue
        except OSError as exc:
            raise SourceError(f"cannot read file: {exc.strerror or exc}") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
    raise SourceError(f"file is over the {max_bytes} byte limit")


def _fetch_url(url: str, *, allow_private: bool, max_bytes: int, timeout: float, deadline: float,
               conditional: dict[str, str] | None = None) -> Fetched:
    # trust_env=False: no proxy variables or .netrc, so the only connections made are
    # to the URL given and its redirects, each checked by the transport.
    with httpx.Client(
        transport=GuardedTransport(allow_private=allow_private, deadline=deadline),
        timeout=timeout, trust_env=False, event_hooks={"response": [_refuse_other_schemes]},
        headers={"User-Agent": "newsletter-worker/0.1 (+feed import)", "Accept-Encoding": ACCEPT_ENCODING},
    ) as client:
        try:
            request = client.build_request("GET", url, headers=conditional or None)
        except (httpx.InvalidURL, ValueError) as exc:  # ValueError: IDNA's, for a host name it cannot encode
            raise SourceError(f"invalid URL: {exc}") from None
        try:
            for _ in range(MAX_REDIRECTS + 1):
                response = client.send(request, stream=True)
                try:
                    if response.next_request is None:
                        return _read_body(response, max_bytes=max_bytes, conditional=bool(conditional))
                    # Hop by hop rather than follow_redirects, which reads a redirect's own
                    # body whole, however large.
                    request = response.next_request
                finally:
                    response.close()
        except (RefusedAddress, DeadlinePassed, BodyRefused) as exc:
            raise SourceError(str(exc)) from None
        except ResolveTimeout as exc:
            raise SourceError(f"fetch failed: {exc}") from None
        except httpcore.TimeoutException:
            raise SourceError(f"no data for {timeout:g} s") from None
        except (httpx.HTTPError, httpx.InvalidURL, ValueError,  # a redirect's Location may be any of these
                httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
            raise SourceError(f"fetch failed: {exc}") from None
    raise SourceError(f"more than {MAX_REDIRECTS} redirects")


def _refuse_other_schemes(response: httpx.Response) -> None:
    # Before httpx reads the Location: it would follow ws: as if it were http:, and fail
    # with an InvalidURL on javascript: or mailto:.
    if response.has_redirect_location:
        scheme = _scheme(response.headers["location"].strip())
        if scheme not in ("", "http", "https"):
            raise SourceError(f"refused a redirect to a {scheme}: URL (only http and https are fetched)")


def _read_body(response: httpx.Response, *, max_bytes: int, conditional: bool = False) -> Fetched:
    etag = _validator(response.headers.get("etag"))
    last_modified = _validator(response.headers.get("last-modified"))
    if response.status_code == 304:
        if not conditional:
            raise SourceError("HTTP 304 Not Modified to a request that was not conditional")
        return Fetched(None, etag, last_modified)
    if response.status_code >= 400:
        raise SourceError(f"HTTP {response.status_code} {response.reason_phrase}")
    return Fetched(read_body(response, max_bytes=max_bytes), etag, last_modified)


def _validator(value: str | None) -> str | None:
    # Sent back verbatim next time: a header value a server could make megabytes long, or
    # put a line break in, is not kept.
    if not value or len(value) > 1000 or any(c in value for c in "\r\n\0"):
        return None
    return value
