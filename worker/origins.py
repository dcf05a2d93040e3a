"""A URL's origin (scheme://host[:port]): what browsers send as Origin and what our
cross-site rules compare (worker/web/crosssite.py), in one spelling."""

from __future__ import annotations

from urllib.parse import urlsplit

# What a browser sends for an origin it will not name (a sandboxed page, a stripped
# referrer): nobody's, so it matches no allowed origin.
NULL = "null"


def origin_of(url: str) -> str:
    """'HTTPS://News.example.org/world?x' -> 'https://news.example.org'; NULL when the URL
    has no scheme or host, or cannot be read."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return NULL
    return f"{parts.scheme}://{parts.netloc}".lower() if parts.scheme and parts.netloc else NULL
