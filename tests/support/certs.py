"""A throwaway CA and server certificates for TLS tests."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Pair:
    cert: Path
    key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, stem: str, cert: x509.Certificate, key) -> Pair:
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Pair(cert_path, key_path)


def _cert(subject: str, issuer_name: x509.Name, issuer_key, key, *, ca: bool, hosts=()) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if hosts:
        names = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_certs(folder: Path) -> dict[str, Pair]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Test CA", _name("Test CA"), ca_key, ca_key, ca=True)
    out = {"ca": _write(folder, "ca", ca, ca_key)}
    for stem, hosts in (("good", ("localhost", "127.0.0.1")), ("wrong", ("wrong.example",))):
        key = ec.generate_private_key(ec.SECP256R1())
        out[stem] = _write(folder, stem, _cert(hosts[0], ca.subject, ca_key, key, ca=False, hosts=hosts), key)
    self_key = ec.generate_private_key(ec.SECP256R1())
    out["self"] = _write(folder, "self", _cert("localhost", _name("localhost"), self_key, self_key, ca=False,
                                               hosts=("localhost", "127.0.0.1")), self_key)
    return out
