"""Compressed responses: decoded by us with the size cap on the output, one content coding at
most, so a few KB that inflate to gigabytes cost a source its import and nothing more."""

from __future__ import annotations

import gzip
import json
import struct
import tracemalloc
import zlib
from datetime import UTC, datetime

import pytest

from tests.support.http import serve
from worker.ingest import import_sources
from worker.ingest.fetch import MAX_SOURCE_BYTES, SourceError, read_source
from worker.ingest.sources import add_source, poll_all_sources

STORY = {"id": "z-1", "url": "https://z.example/1", "title": "Zipped", "regions": ["RU"],
         "published_at": "2025-01-28T10:00:00Z"}
GIB = 1 << 30


def _gzip_of_zeros(size: int) -> bytes:
    """gzip of `size` zero bytes (a whole number of MiB), made in a blink: after the first MiB,
    each MiB of zeros deflates to the same bytes, so they are repeated, and the trailer is written."""
    mib = bytes(1 << 20)
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = packer.compress(mib) + packer.flush(zlib.Z_SYNC_FLUSH)
    again = packer.compress(mib) + packer.flush(zlib.Z_SYNC_FLUSH)
    end = packer.flush()[:-8]
    crc = zlib.crc32(mib)
    for _ in range(size // len(mib) - 1):
        crc = zlib.crc32(mib, crc)
    return first + again * (size // len(mib) - 1) + end + struct.pack("<II", crc, size & 0xFFFFFFFF)


@pytest.fixture(scope="module")
def bombs():
    single = _gzip_of_zeros(GIB)
    return {"single": single, "stacked": gzip.compress(single, 9)}


@pytest.fixture
def server():
    server, served = serve()
    yield served
    server.shutdown()


def _peak_while(call):
    tracemalloc.start()
    try:
        result = call()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow  # inflates the whole GiB to check the test's own bomb
def test_the_bomb_is_what_it_claims(bombs):
    assert len(bombs["stacked"]) < 5_000 and len(bombs["single"]) < 1_100_000
    inner = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(bombs["stacked"])
    assert inner == bombs["single"]
    inflater, size, data = zlib.decompressobj(16 + zlib.MAX_WBITS), 0, inner
    while data:
        size += len(inflater.decompress(data, 1 << 20))
        data = inflater.unconsumed_tail
    assert (size, inflater.eof) == (GIB, True)  # a valid gzip stream, checksum and length included


def test_stacked_codings_are_refused_with_the_reason_and_nothing_inflated(engine, server, bombs):
    url = server.add("/stacked.xml", bombs["stacked"], headers={"Content-Encoding": "gzip, gzip"})
    report, peak = _peak_while(lambda: import_sources(engine, [url], allow_private=True))
    assert report.added == 0
    assert [(r.source, r.reason) for r in report.rejected] == [
        (url, "refused a body with 2 content codings (gzip, gzip): at most one is decoded")]
    assert peak < MAX_SOURCE_BYTES  # a 3 GiB allocation before


@pytest.mark.parametrize("header", [{"Content-Encoding": "deflate, gzip"}, {"Content-Encoding": "gzip, br"}])
def test_two_codings_are_refused_whatever_they_are(server, header):
    url = server.add("/two.json", gzip.compress(json.dumps([STORY]).encode()), headers=header)
    with pytest.raises(SourceError, match="2 content codings"):
        read_source(url, allow_private=True)


def test_a_gzip_bomb_is_cut_at_the_cap_on_what_it_decodes_to(engine, server, bombs):
    # About 1 MB on the wire, well under the cap; 1 GiB once inflated.
    url = server.add("/bomb.xml", bombs["single"], headers={"Content-Encoding": "gzip"})
    report, peak = _peak_while(lambda: import_sources(engine, [url], allow_private=True))
    assert [(r.source, r.reason) for r in report.rejected] == [
        (url, f"response decodes to over the {MAX_SOURCE_BYTES} byte limit (gzip)")]
    # Bounded by the cap (what was decoded so far), plus the raw body the test's server holds.
    assert peak < MAX_SOURCE_BYTES + 3 * len(bombs["single"])


def test_the_poller_fails_the_bombed_source_and_goes_on_with_the_next(engine, settings, server, bombs):
    bomb = server.add("/bomb.xml", bombs["single"], headers={"Content-Encoding": "gzip"})
    good = server.add("/good.json", gzip.compress(json.dumps([STORY]).encode()), "application/json",
                      headers={"Content-Encoding": "gzip"})
    add_source(engine, bomb)
    add_source(engine, good)
    local = settings.model_copy(update={"fetch_allow_private": True})
    failed, read = poll_all_sources(engine, local, datetime(2025, 1, 29, 12, tzinfo=UTC))
    assert (failed.outcome, failed.error) == ("failed", f"response decodes to over the {MAX_SOURCE_BYTES} byte "
                                                        "limit (gzip)")
    assert (read.outcome, read.added) == ("read", 1)


@pytest.mark.parametrize(("coding", "pack"), [
    ("gzip", gzip.compress),
    ("x-gzip", gzip.compress),
    ("deflate", zlib.compress),                                   # zlib-wrapped, as RFC 9110 says
    ("deflate", lambda data: zlib.compress(data, wbits=-zlib.MAX_WBITS)),  # raw, as many servers send it
    ("identity", lambda data: data),
])
def test_a_feed_in_one_coding_is_decoded(server, coding, pack):
    body = json.dumps([STORY] * 200).encode()
    url = server.add("/feed.json", pack(body), "application/json", headers={"Content-Encoding": coding})
    assert read_source(url, allow_private=True) == body


def test_a_body_just_at_the_cap_is_read_and_one_byte_over_is_not(server):
    body = b"x" * 1000
    url = server.add("/feed.json", gzip.compress(body), headers={"Content-Encoding": "gzip"})
    assert read_source(url, allow_private=True, max_bytes=1000) == body
    with pytest.raises(SourceError, match="decodes to over the 999 byte limit"):
        read_source(url, allow_private=True, max_bytes=999)


@pytest.mark.parametrize(("body", "header", "reason"), [
    (b"\x1b\x00\x00", "br", "refused a body in content coding 'br': only gzip and deflate are decoded"),
    (b"(\xb5/\xfd", "zstd", "refused a body in content coding 'zstd': only gzip and deflate are decoded"),
    (gzip.compress(b"[]" * 5000, mtime=0)[:-30], "gzip", "the gzip body ends before its compressed stream does"),
    (b"not gzip at all", "gzip", "cannot decode the gzip content coding: "),
])
def test_a_body_that_cannot_be_decoded_is_refused_with_the_reason(server, body, header, reason):
    url = server.add("/feed.json", body, headers={"Content-Encoding": header})
    with pytest.raises(SourceError) as refused:
        read_source(url, allow_private=True)
    assert str(refused.value).startswith(reason)
