"""URLs as they are shown: credentials replaced, wherever an operator or a log sees one.

A feed URL often carries its credentials (`https://user:pass@host/feed`, `?token=...`), and
so may a database or broker URL. Every place that prints one (the operator page,
`newsletter config`, `sources add/list/poll/remove`, `stories import`, the worker's log)
shows mask_url(url); the stored URL is the real one.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

MASK = "***"
# Query parameter names that carry credentials in URLs met in practice: tokens, API keys,
# passwords, secrets, signatures (X-Amz-Signature, sig), auth and credential parameters
# (X-Amz-Credential), sessions. Over-masking a harmless `keyword=` costs nothing.
_SECRET_PARAMETER = re.compile(r"token|key|pass|pwd|secret|sig|auth|cred|session|ticket", re.IGNORECASE)
# For text urlsplit refuses (an unclosed bracket): whatever sits between // and @.
_USERINFO = re.compile(r"(?<=//)[^/?#]*@")


def mask_url(url: str) -> str:
    """url with its password (or a lone user name, often a token itself) and the values of
    secret-looking query parameters replaced by ***; anything else, a file path included,
    exactly as given."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _USERINFO.sub(f"{MASK}@", url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"
    query = "&".join(_mask_parameter(pair) for pair in parts.query.split("&"))
    if (netloc, query) == (parts.netloc, parts.query):
        return url  # untouched: urlunsplit would normalise what it does not change ("a?" to "a")
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _mask_parameter(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if equals and value and _SECRET_PARAMETER.search(unquote(name)):
        return f"{name}={MASK}"
    return pair


class MaskedUrlArguments(logging.Filter):
    """Masks every URL argument of a log record: httpx logs each request's whole URL at
    INFO ("HTTP Request: GET https://user:pass@..."), and the worker runs at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(mask_url(str(arg)) if isinstance(arg, httpx.URL | str) and "://" in str(arg)
                                else arg for arg in record.args)
        return True


def mask_httpx_log() -> None:
    """Install MaskedUrlArguments on httpx's logger, once (called where a fetch is set up)."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, MaskedUrlArguments) for f in logger.filters):
        logger.addFilter(MaskedUrlArguments())
