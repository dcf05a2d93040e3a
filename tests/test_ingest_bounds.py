"""Bounded input whatever the source is: at most the cap is read from a file, a device, a FIFO
or a URL, and a URL fetch ends by its deadline however the server paces its bytes."""

import json
import os
import threading
import time

import pytest

from tests.support.http import serve
from worker.ingest import import_sources
from worker.ingest.fetch import FETCH_DEADLINE, FETCH_TIMEOUT, MAX_SOURCE_BYTES, SourceError, read_source

STORY = {"id": "b-1", "url": "https://b.example/1", "title": "Bounded", "regions": ["RU"],
         "published_at": "2025-01-28T10:00:00Z"}
OVER_CAP = f"file is over the {MAX_SOURCE_BYTES} byte limit"


@pytest.fixture
def after(tmp_path):
    path = tmp_path / "after.json"
    path.write_text(json.dumps([STORY]))
    return str(path)


def test_dev_zero_is_refused_quickly_by_size(engine, after):
    started = time.monotonic()
    report = import_sources(engine, ["/dev/zero", after])
    assert time.monotonic() - started < 5
    assert [(r.source, r.reason) for r in report.rejected] == [("/dev/zero", OVER_CAP)]
    assert report.added == 1


def test_a_proc_file_is_read_like_any_file():
    # stat() says 0 bytes for it, yet it has content: what was read decides, not stat.
    assert os.stat("/proc/self/status").st_size == 0
    assert read_source("/proc/self/status").startswith(b"Name:")


def test_a_fifo_whose_writer_sends_more_than_the_cap_is_refused(engine, tmp_path, after):
    fifo = tmp_path / "feed.fifo"
    os.mkfifo(fifo)
    written = []

    def writer():
        chunk = b" " * 65536
        with open(fifo, "wb", buffering=0) as pipe:
            try:
                # More than the cap, but finite: the old unbounded read would otherwise never end.
                for _ in range(MAX_SOURCE_BYTES // len(chunk) + 16):
                    pipe.write(chunk)
                    written.append(len(chunk))
            except BrokenPipeError:
                pass  # the reader stopped at the cap and closed its end

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    report = import_sources(engine, [str(fifo), after])
    thread.join(10)
    assert [(r.source, r.reason) for r in report.rejected] == [(str(fifo), OVER_CAP)]
    assert report.added == 1


def test_a_small_fifo_is_read_whole(tmp_path):
    fifo = tmp_path / "small.fifo"
    os.mkfifo(fifo)
    threading.Thread(target=lambda: fifo.write_bytes(b"[]"), daemon=True).start()
    assert read_source(str(fifo)) == b"[]"


def test_a_fifo_nobody_writes_to_is_refused_after_the_read_timeout(tmp_path):
    # open() of a FIFO blocks until a writer comes; this one never does.
    fifo = tmp_path / "silent.fifo"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match=r"^no data from the file for 0.5 s$"):
        read_source(str(fifo), timeout=0.5, deadline=30)


@pytest.mark.slow
def test_a_fifo_nobody_writes_to_is_refused_at_the_default_read_timeout(tmp_path):
    fifo = tmp_path / "silent.fifo"
    os.mkfifo(fifo)
    with pytest.raises(SourceError, match=rf"^no data from the file for {FETCH_TIMEOUT:g} s$"):
        read_source(str(fifo))


def test_a_fifo_dripping_bytes_is_cut_off_by_the_deadline(tmp_path):
    fifo = tmp_path / "drip.fifo"
    os.mkfifo(fifo)
    stop = threading.Event()

    def writer():
        with open(fifo, "wb", buffering=0) as pipe:
            try:
                while not stop.is_set():
                    pipe.write(b" ")
                    stop.wait(0.05)
            except BrokenPipeError:
                pass

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        with pytest.raises(SourceError, match=r"^file not read whole within 1 s$"):
            read_source(str(fifo), timeout=0.5, deadline=1)
    finally:
        stop.set()
        thread.join(5)


def test_a_directory_is_refused_with_the_reason(tmp_path):
    with pytest.raises(SourceError, match=r"^cannot read file: Is a directory$"):
        read_source(str(tmp_path))


@pytest.mark.slow
def test_a_server_dripping_bytes_is_cut_off_by_the_overall_deadline():
    server, served = serve()
    try:
        # Every read gets a byte within the per-read timeout, so only the whole-fetch deadline ends it:
        # the status line itself arrives a byte at a time.
        url = served.add("/drip.json", json.dumps([STORY] * 20), "application/json", drip=0.05)
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            read_source(url, allow_private=True, deadline=1.0)
        elapsed = time.monotonic() - started
    finally:
        server.shutdown()
    assert str(caught.value) == "took longer than 1 s"
    assert 0.9 < elapsed < 3


@pytest.mark.slow
def test_a_silent_server_trips_the_per_read_timeout_before_the_deadline():
    server, served = serve()
    try:
        url = served.add("/slow.json", b"[]", "application/json", drip=5)
        started = time.monotonic()
        with pytest.raises(SourceError, match=r"^no data for 0.5 s$"):
            read_source(url, allow_private=True, timeout=0.5, deadline=30)
        assert time.monotonic() - started < 3
    finally:
        server.shutdown()


def test_the_defaults_bound_every_read_and_the_whole_fetch():
    # A deadline shorter than one read's timeout would make that timeout meaningless.
    assert 0 < FETCH_TIMEOUT < FETCH_DEADLINE <= 300


@pytest.mark.slow
def test_a_source_of_millions_of_tiny_items_is_cut_at_the_item_cap(engine, tmp_path):
    from worker.ingest import import_sources
    from worker.ingest.importer import MAX_ITEMS

    path = tmp_path / "zeros.json"
    path.write_text("[" + ",".join(["0"] * 1_000_000) + "]")
    report = import_sources(engine, [str(path)])
    assert report.added == 0
    assert len(report.rejected) == MAX_ITEMS + 1
    assert report.rejected[0].reason == (
        "1000000 items, more than 10,000: items after the 10,000th were not read")


def test_an_element_with_too_many_attributes_is_refused_before_feedparser(engine, tmp_path, after):
    # feedparser's time grows with the square of one element's attributes: 100,000 took
    # 75 s of CPU, and a 10 MB tag of them would take hours of the beat's poll.
    from worker.ingest.parse import MAX_ATTRIBUTES

    attrs = " ".join(f'a{i}="v"' for i in range(100_000))
    path = tmp_path / "attrs.rss"
    path.write_text(f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>'
                    f'<item {attrs}><title>x</title><link>https://a.example/1</link></item></channel></rss>')
    report = import_sources(engine, [str(path), after])
    assert [(r.source, r.reason) for r in report.rejected] == [
        (str(path), f"an element with more than {MAX_ATTRIBUTES} attributes (at byte 65): not a feed")]
    assert report.added == 1


def test_an_element_at_the_attribute_limit_is_parsed(tmp_path):
    from worker.ingest.parse import MAX_ATTRIBUTES, parse_items

    attrs = " ".join(f"a{i} = 'v=1 x'" for i in range(MAX_ATTRIBUTES))
    body = (f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title><item {attrs}><title>x</title>'
            f'<link>https://a.example/1</link></item></channel></rss>').encode()
    assert [item.title for item in parse_items(body)] == ["x"]
