"""A response body read whole, with the size cap on what decoding produces.

httpx decodes a content coding one received chunk at a time and whole, and applies every
coding listed: a few KB of `Content-Encoding: gzip, gzip` became gigabytes before any cap
saw them. Here the raw bytes are read (httpx's iter_raw) and inflated by zlib with
`max_length`, so no step produces more than the cap; one coding at most is decoded, and
only the ones asked for (ACCEPT_ENCODING). Every fetch uses it: feeds, SNS certificates.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

import httpx

# Sent with every request: what read_body decodes. No br or zstd: neither decoder
# installed here bounds its output.
ACCEPT_ENCODING = "gzip, deflate"
# Inflated a piece at a time, so what is held is the body so far plus one piece.
_PIECE = 1 << 16
_ZLIB_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


class BodyRefused(Exception):
    """The body is over the size cap (raw or decoded), or coded in a way that is not decoded."""


def read_body(response: httpx.Response, *, max_bytes: int) -> bytes:
    """The decoded body; BodyRefused once the raw or the decoded bytes pass max_bytes."""
    codings = [c.strip().lower() for c in response.headers.get_list("content-encoding", split_commas=True)]
    codings = [c for c in codings if c and c != "identity"]
    if len(codings) > 1:
        raise BodyRefused(f"refused a body with {len(codings)} content codings ({', '.join(codings)}): "
                          "at most one is decoded")
    if codings and codings[0] not in _ZLIB_WBITS:
        raise BodyRefused(f"refused a body in content coding {codings[0][:40]!r}: only gzip and deflate are decoded")
    declared = response.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > max_bytes:
        raise BodyRefused(f"response is {declared} bytes, over the {max_bytes} byte limit")
    raw = _capped(response.iter_raw(), max_bytes, "response is over the {} byte limit")
    if codings:
        raw = _inflate(raw, codings[0], max_bytes)
    return b"".join(raw)


def _capped(chunks: Iterable[bytes], max_bytes: int, message: str) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > max_bytes:
            raise BodyRefused(message.format(max_bytes))
        yield chunk


def _inflate(chunks: Iterable[bytes], coding: str, max_bytes: int) -> Iterator[bytes]:
    """The decoded bytes, never more than max_bytes + 1 of them made (the +1 says "over")."""
    wbits = _ZLIB_WBITS[coding]
    inflater: zlib._Decompress | None = None
    produced = 0
    try:
        for data in chunks:
            if inflater is None:
                if coding == "deflate" and not _zlib_header(data):
                    wbits = -zlib.MAX_WBITS  # "deflate" as servers send it: often raw, without zlib's header
                inflater = zlib.decompressobj(wbits)
            while data and not inflater.eof:
                piece = inflater.decompress(data, min(_PIECE, max_bytes + 1 - produced))
                produced += len(piece)
                if produced > max_bytes:
                    raise BodyRefused(f"response decodes to over the {max_bytes} byte limit ({coding})")
                yield piece
                data = inflater.unconsumed_tail
        if inflater is not None:
            if not inflater.eof:
                raise BodyRefused(f"the {coding} body ends before its compressed stream does")
            # All input is consumed: zlib holds back at most part of one match, never more than its window.
            rest = inflater.flush()
            if produced + len(rest) > max_bytes:
                raise BodyRefused(f"response decodes to over the {max_bytes} byte limit ({coding})")
            yield rest
    except zlib.error as exc:
        raise BodyRefused(f"cannot decode the {coding} content coding: {exc}") from None


def _zlib_header(data: bytes) -> bool:
    # RFC 1950: deflate method (8) in the low nibble, and the first two bytes a multiple of 31.
    return len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0
