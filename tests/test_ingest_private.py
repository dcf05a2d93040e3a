"""Feeds are fetched from public addresses only, unless NEWSLETTER_FETCH_ALLOW_PRIVATE says the
feed is internal. The address checked is the one connected to, after resolution, on every hop."""

import datetime as dt
import ipaddress
import json
import socket
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.http import ConnectionLog, serve
from worker.ingest import import_sources
from worker.ingest.fetch import SourceError, read_source
from worker.ingest.network import GuardedBackend, RefusedAddress, is_public

STORY = {"id": "p-1", "url": "https://p.example/1", "title": "Private", "regions": ["RU"],
         "published_at": "2025-01-28T10:00:00Z"}

NOT_PUBLIC = [
    "127.0.0.1", "127.255.255.254", "0.0.0.0", "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1",
    "169.254.169.254", "192.0.2.1", "198.18.0.1", "240.0.0.1", "255.255.255.255",
    "::1", "::", "fe80::1", "fe80::1%lo", "fc00::1", "fd12:3456::1", "2001:db8::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1", "::ffff:192.168.0.1",
]
# IPv6 addresses that reach an IPv4 host through a translator or a tunnel: `is_global` is true
# for the prefix, so the IPv4 inside is what is judged.
EMBEDDING_PRIVATE = [
    "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::10.0.0.1",      # NAT64 well-known prefix
    "64:ff9b:1::c0a8:1", "64:ff9b:1::127.0.0.1",                        # NAT64 local-use prefix
    "64:ff9b:1::8.8.8.8", "64:ff9b:1:7f00:1:0:808:808",                 # ... never public: not global
    "2002:7f00:1::1", "2002:a9fe:a9fe::", "2002:c0a8:101:1::1",         # 6to4
    "::127.0.0.1", "::7f00:1", "::10.1.2.3", "::169.254.169.254",       # IPv4-compatible
    "::ffff:0:127.0.0.1", "::ffff:0:a9fe:a9fe",                         # IPv4-translated (SIIT)
    # Teredo: server 65.54.227.120 with client 127.0.0.1 (obfuscated: 80ff:fffe), and a private server.
    "2001:0:4136:e378:8000:63bf:80ff:fffe", "2001:0:a00:1:8000:63bf:f7f7:f7f7",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.215.14", "2606:4700:4700::1111", "2a00:1450:4001::1", "::ffff:8.8.8.8",
          "64:ff9b::808:808", "2002:808:808::1", "::8.8.8.8"]


@pytest.mark.parametrize("address", NOT_PUBLIC + EMBEDDING_PRIVATE)
def test_internal_addresses_fail_the_check(address):
    assert not is_public(address)


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass_the_check(address):
    assert is_public(address)


# Ways to spell loopback (or "this host", which Linux routes to it too) that httpx passes on to
# the resolver. (It refuses dotted octal such as 0177.0.0.1 as an invalid IPv4 address itself.)
LOOPBACK_SPELLINGS = ["localhost", "127.0.0.1", "127.1", "2130706433", "0x7f000001",
                      "0.0.0.0", "[::1]", "[::ffff:127.0.0.1]", "[::]"]


@pytest.fixture
def feed_server():
    server, served = serve()
    served.add("/feed.json", json.dumps([STORY]), "application/json")
    yield server.server_address[1], served
    server.shutdown()


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_every_spelling_of_an_internal_address_is_refused_by_default(engine, feed_server, host):
    port, served = feed_server
    url = f"http://{host}:{port}/feed.json"
    with ConnectionLog() as log:
        report = import_sources(engine, [url])
    assert report.added == 0 and [r.source for r in report.rejected] == [url]
    reason = report.rejected[0].reason
    assert reason.startswith("refused to connect to ") and "not a public address" in reason
    assert "NEWSLETTER_FETCH_ALLOW_PRIVATE=true" in reason
    assert served.hits == []
    assert not [a for a in log.addresses if isinstance(a, tuple) and a[1] == port]


@pytest.mark.parametrize("host", ["localhost", "127.1", "2130706433", "0x7f000001", "[::ffff:127.0.0.1]"])
def test_allow_private_fetches_from_internal_addresses(engine, feed_server, host):
    port, served = feed_server
    report = import_sources(engine, [f"http://{host}:{port}/feed.json"], allow_private=True)
    assert (report.added, report.rejected) == (1, [])
    assert served.hits == ["/feed.json"]


def test_the_check_runs_on_the_resolved_address_when_connecting():
    # The name says nothing; what it resolves to at connect time is refused, before any socket connects.
    backend = GuardedBackend(allow_private=False, deadline=5)
    with ConnectionLog() as log, pytest.raises(RefusedAddress, match=r"^refused to connect to localhost \(127"):
        backend.connect_tcp("localhost", 9, timeout=1)
    assert log.addresses == []


@pytest.mark.parametrize(("address", "inner"), [
    ("64:ff9b::7f00:1", "127.0.0.1"), ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"), ("2002:7f00:1::1", "127.0.0.1"),
    ("::127.0.0.1", "127.0.0.1"), ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),
])
def test_a_url_naming_an_address_that_embeds_an_internal_ipv4_is_refused(engine, feed_server, address, inner):
    port, served = feed_server
    url = f"http://[{address}]:{port}/feed.json"
    with ConnectionLog() as log:
        report = import_sources(engine, [url])
    [rejection] = report.rejected
    assert rejection.reason.startswith(f"refused to connect to {address}, which embeds {inner}: not a public")
    assert "NEWSLETTER_FETCH_ALLOW_PRIVATE=true" in rejection.reason
    assert log.addresses == []


def test_a_name_whose_dns_answer_embeds_an_internal_ipv4_is_refused(monkeypatch):
    # What a DNS64 resolver answers for a name whose only address is 169.254.169.254.
    answer = [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("64:ff9b::a9fe:a9fe", 80, 0, 0))]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answer)
    backend = GuardedBackend(allow_private=False, deadline=5)
    with ConnectionLog() as log, pytest.raises(RefusedAddress) as refused:
        backend.connect_tcp("metadata.example", 80, timeout=1)
    assert str(refused.value).startswith(
        "refused to connect to metadata.example (64:ff9b::a9fe:a9fe), which embeds 169.254.169.254: not a public")
    assert log.addresses == []


def test_a_redirect_chain_through_internal_addresses_is_refused_unless_allowed(engine):
    inner, inner_served = serve()
    outer, outer_served = serve()
    try:
        target = inner_served.add("/feed.json", json.dumps([STORY]), "application/json")
        hop = target.replace("127.0.0.1", "0x7f000001")
        start = outer_served.add("/moved", hop, status=302)
        # Allowed: both hops are fetched, the second through its own resolution and connect.
        assert import_sources(engine, [start], allow_private=True).added == 1
        refused = import_sources(engine, [start])
    finally:
        inner.shutdown()
        outer.shutdown()
    assert [r.reason.split(":")[0] for r in refused.rejected] == ["refused to connect to 127.0.0.1"]
    assert (outer_served.hits, inner_served.hits) == (["/moved"], ["/feed.json"])


def test_the_cli_reports_refusals_and_bad_urls_as_rejections(run_cli, feed_server, tmp_path):
    port, served = feed_server
    good = tmp_path / "good.json"
    good.write_text(json.dumps([dict(STORY, id="p-2")]))
    internal = f"http://127.1:{port}/feed.json"
    result = run_cli("stories", "import", internal, "http://[::1/feed", "https://xn--/feed", str(good))
    assert result.code == 1
    assert "Traceback" not in result.err and "--debug" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"rejected: {internal}: refused to connect to 127.1 (127.0.0.1)")
    assert "NEWSLETTER_FETCH_ALLOW_PRIVATE=true" in lines[0]
    assert lines[1].startswith("rejected: http://[::1/feed: invalid URL")
    assert lines[2].startswith("rejected: https://xn--/feed: invalid URL")
    assert "1 added" in result.out
    assert served.hits == []


def test_the_cli_fetches_internal_feeds_when_the_setting_allows_it(run_cli, feed_server):
    port, served = feed_server
    result = run_cli("stories", "import", f"http://127.1:{port}/feed.json",
                     env={"NEWSLETTER_FETCH_ALLOW_PRIVATE": "true"})
    assert (result.code, result.err) == (0, "")
    assert "1 added" in result.out and served.hits == ["/feed.json"]


def _cert(subject, issuer, issuer_key, key, *, ca, san=None):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([san]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def tls_server(tmp_path, monkeypatch):
    """An HTTPS feed server on 127.0.0.1; the certificate it presents is chosen per test."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test CA", None, ca_key, ca_key, ca=True)
    (tmp_path / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    # The fetcher's default TLS context trusts the CA named by SSL_CERT_FILE.
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    servers = []

    def start(san):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert("feed", ca.subject, ca_key, key, ca=False, san=san)
        (tmp_path / "leaf.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (tmp_path / "leaf.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(tmp_path / "leaf.pem", tmp_path / "leaf.key")
        server, served = serve(tls=context)
        servers.append(server)
        served.add("/feed.json", json.dumps([STORY]), "application/json")
        return f"https://localhost:{server.server_address[1]}/feed.json"

    yield start
    for server in servers:
        server.shutdown()


def test_tls_is_verified_against_the_host_name_while_connecting_to_the_checked_address(tls_server):
    # The certificate names only "localhost": connecting to 127.0.0.1 and verifying the name works.
    url = tls_server(x509.DNSName("localhost"))
    assert json.loads(read_source(url, allow_private=True)) == [STORY]


def test_tls_is_not_verified_against_the_address_connected_to(tls_server):
    # A certificate for 127.0.0.1 alone does not prove it is "localhost".
    url = tls_server(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    with pytest.raises(SourceError, match="certificate verify failed"):
        read_source(url, allow_private=True)
