"""A private Dovecot IMAP server for tests: its own config, run and mail folders under
/tmp, IMAPS on one free loopback port with a certificate from tests/support/certs.py, one
user whose mail is a Maildir the test writes into. Nothing of the system's Dovecot is
used but its binary; it needs root (Dovecot drops to its own users).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from tests.support.certs import make_certs
from tests.support.net import wait_listening

DOVECOT = "/usr/sbin/dovecot"
USER, PASSWORD = "bouncer", "imap-test-password"


def missing() -> str | None:
    if not Path(DOVECOT).exists():
        return "dovecot is not installed (.ci/tools installs dovecot-imapd)"
    if os.geteuid() != 0:
        return "a Dovecot instance must be started as root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateDovecot:
    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="nl-dovecot-"))
        self.root.chmod(0o755)
        self.port = _free_port()
        self.certs = make_certs(self.root)
        self.maildir = self.root / "mail" / USER
        for sub in ("new", "cur", "tmp"):
            (self.maildir / sub).mkdir(parents=True)
        owner = pwd.getpwnam("nobody")
        self.uid, self.gid = owner.pw_uid, owner.pw_gid
        for path in [self.root / "mail", *self.maildir.rglob("*"), self.maildir]:
            os.chown(path, self.uid, self.gid)
        self.config = self.root / "dovecot.conf"
        self.config.write_text(f"""\
base_dir = {self.root}/run
state_dir = {self.root}/state
log_path = {self.root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{self.certs['good'].cert}
ssl_key = <{self.certs['good'].key}
disable_plaintext_auth = yes
auth_mechanisms = plain
mail_location = maildir:{self.root}/mail/%u
first_valid_uid = 1
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={self.uid} gid={self.gid} home={self.root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = {self.port}
    ssl = yes
  }}
}}
""")

    def url(self) -> str:
        return f"imaps://{USER}:{PASSWORD}@127.0.0.1:{self.port}/INBOX"

    def add(self, name: str, data: bytes) -> None:
        path = self.maildir / "new" / name
        path.write_bytes(data)
        os.chown(path, self.uid, self.gid)

    def start(self) -> PrivateDovecot:
        # The daemon keeps whatever it inherits open: no pipes, its log is the file.
        done = subprocess.run([DOVECOT, "-c", str(self.config)], stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"dovecot failed ({done.returncode}): {self.log()}")
        wait_listening(self.port, what="dovecot", log=self.log)
        return self

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else "(no log)"

    def stop(self) -> None:
        try:
            subprocess.run([DOVECOT, "-c", str(self.config), "stop"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
