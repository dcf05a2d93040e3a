"""Read a story source: a local file or an http(s) URL, bounded in time and size."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import httpx

# A week of a busy site's feed is well under 1 MB; 10 MB leaves room and still
# stops a runaway or hostile response before it eats memory.
MAX_SOURCE_BYTES = 10 * 1024 * 1024
FETCH_TIMEOUT = 20.0


class SourceError(Exception):
    """The whole source could not be read or parsed; its items were not looked at."""


def read_source(source: str, *, max_bytes: int | None = None, timeout: float | None = None) -> bytes:
    max_bytes = max_bytes or MAX_SOURCE_BYTES
    timeout = timeout or FETCH_TIMEOUT
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        return _fetch_url(source, max_bytes=max_bytes, timeout=timeout)
    if len(scheme) > 1:  # "C:" is a Windows drive, anything longer a scheme
        raise SourceError(f"unsupported URL scheme {scheme!r}: only http(s) URLs and file paths")
    path = Path(source)
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise SourceError(f"file is {size} bytes, over the {max_bytes} byte limit")
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read file: {exc.strerror}") from None


def _fetch_url(url: str, *, max_bytes: int, timeout: float) -> bytes:
    # trust_env=False: no proxy variables or .netrc, so the only connection made
    # is to the URL the user gave (and its http(s) redirects).
    try:
        with httpx.Client(
            timeout=timeout, follow_redirects=True, max_redirects=5, trust_env=False,
            headers={"User-Agent": "newsletter-worker/0.1 (+feed import)"},
        ) as client, client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise SourceError(f"HTTP {response.status_code} {response.reason_phrase}")
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise SourceError(f"response is {declared} bytes, over the {max_bytes} byte limit")
            chunks: list[bytes] = []
            total = 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise SourceError(f"response is over the {max_bytes} byte limit")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise SourceError(f"timed out after {timeout:g} s") from None
    except httpx.HTTPError as exc:
        raise SourceError(f"fetch failed: {exc}") from None
