"""A DNS server that never answers cannot hold a fetch past its bounds.

The C resolver has no timeout to pass in, and resolv.conf's own (`timeout:30 attempts:5`
here) can add up to minutes. The fetch runs in a child process with its own mount
namespace, whose /etc/resolv.conf names a server on 127.0.0.1:53 that reads queries and
never replies: the real resolver, a real silent server.
"""

import shutil
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from worker.ingest.fetch import FETCH_TIMEOUT

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import sys
    from worker.ingest.fetch import SourceError, read_source
    kwargs = eval(sys.argv[1])
    try:
        read_source("http://feed.example.org/feed.xml", **kwargs)
    except SourceError as exc:
        print(exc)
""")


@pytest.fixture
def silent_dns(tmp_path):
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to give the child its own /etc/resolv.conf")
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        server.bind(("127.0.0.1", 53))
    except OSError as exc:
        pytest.fail(f"cannot listen on 127.0.0.1:53 for the silent DNS server: {exc}")
    server.settimeout(0.1)
    queries = []
    stop = threading.Event()

    def listen():
        while not stop.is_set():
            try:
                queries.append(server.recvfrom(4096)[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\noptions timeout:30 attempts:5\n")
    yield resolv, queries
    stop.set()
    thread.join()
    server.close()


def fetch_in_namespace(resolv, kwargs: dict, limit: float) -> str:
    script = f'mount --bind {resolv} /etc/resolv.conf && exec "$0" -c "$1" "$2"'
    done = subprocess.run(["unshare", "--mount", "sh", "-c", script, sys.executable, CHILD, repr(kwargs)],
                          capture_output=True, text=True, timeout=limit)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_silent_dns_server_ends_at_the_read_timeout(silent_dns):
    resolv, queries = silent_dns
    said = fetch_in_namespace(resolv, {"timeout": 1, "deadline": 30}, limit=25)
    assert said == "fetch failed: cannot resolve feed.example.org: no answer within 1 s"
    assert any(b"feed" in q and b"example" in q for q in queries)


def test_a_silent_dns_server_ends_at_the_deadline(silent_dns):
    resolv, _ = silent_dns
    assert fetch_in_namespace(resolv, {"timeout": 5, "deadline": 1}, limit=25) == "took longer than 1 s"


@pytest.mark.timeout(180)
def test_a_silent_dns_server_at_the_default_bounds(silent_dns):
    # Without the bound the resolver alone would wait up to 150 s here.
    resolv, _ = silent_dns
    said = fetch_in_namespace(resolv, {}, limit=FETCH_TIMEOUT + 30)
    assert said == f"fetch failed: cannot resolve feed.example.org: no answer within {FETCH_TIMEOUT:g} s"
