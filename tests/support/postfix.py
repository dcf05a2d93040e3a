"""A private Postfix instance for tests: its own config, queue, data and mail folders under
a temporary directory, listening on one free loopback port, relaying everything to a test
SMTP server (tests/support/smtp.py), and delivering the bounce domain's mail into a
Maildir. Nothing of the system's Postfix is used but its binaries (and its master.cf as
the template for the services); it needs root (`postfix start` does) and the `postfix`
user and `postdrop` group the package creates.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.net import wait_listening

POSTFIX = "/usr/sbin/postfix"


def missing() -> str | None:
    """Why a private instance cannot run here, or None."""
    if shutil.which("postfix") is None and not Path(POSTFIX).exists():
        return "postfix is not installed (.ci/tools installs it)"
    if os.geteuid() != 0:
        return "a Postfix instance must be started as root"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "the postfix user or the postdrop group is missing"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostfix:
    def __init__(self, *, relay_port: int, bounce_domain: str) -> None:
        # Its own folder under /tmp, not pytest's (mode 0700: the postfix user could not
        # reach its data and mail folders there); removed by stop().
        root = Path(tempfile.mkdtemp(prefix="nl-postfix-"))
        self.root = root
        self.port = _free_port()
        self.etc, self.queue, self.data, self.mail = (root / n for n in ("etc", "queue", "data", "mail"))
        self.maildir = self.mail / "bounces"
        self.log = root / "maillog"
        owner = pwd.getpwnam("postfix")
        for folder in (self.etc, self.queue, self.data, self.mail):
            folder.mkdir(parents=True)
        os.chown(self.data, owner.pw_uid, owner.pw_gid)
        os.chown(self.mail, owner.pw_uid, owner.pw_gid)
        root.chmod(0o755)
        shutil.copy("/etc/postfix/master.cf", self.etc / "master.cf")
        (self.etc / "main.cf").write_text(f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = loopback-only
inet_protocols = ipv4
myhostname = relay.test
mydomain = relay.test
mydestination =
mynetworks = 127.0.0.0/8
# Everything goes to the test SMTP server, which refuses or takes each recipient.
relayhost = [127.0.0.1]:{relay_port}
smtp_dns_support_level = disabled
# A refusal at RCPT is final at once: the DSN is mailed to the envelope sender.
virtual_mailbox_domains = {bounce_domain}
virtual_mailbox_base = {self.mail}
virtual_mailbox_maps = static:bounces/
virtual_uid_maps = static:{owner.pw_uid}
virtual_gid_maps = static:{owner.pw_gid}
alias_maps =
alias_database =
biff = no
maillog_file = {self.log}
maillog_file_prefixes = {root}
""")
        self._postconf("-F", "*/*/chroot = n")
        self._postconf("-MX", "smtp/inet")
        self._postconf("-Me", f"127.0.0.1:{self.port}/inet = 127.0.0.1:{self.port} inet n - n - - smtpd")

    def _postconf(self, *args: str) -> None:
        subprocess.run(["postconf", "-c", str(self.etc), *args], check=True, capture_output=True, timeout=30)

    def _postfix(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run([POSTFIX, "-c", str(self.etc), command], capture_output=True, text=True, timeout=60)

    def start(self) -> PrivatePostfix:
        done = self._postfix("start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start failed: {done.stderr or done.stdout}\n{self.read_log()}")
        wait_listening(self.port, what="postfix", log=self.read_log)
        return self

    def stop(self) -> None:
        try:
            self._postfix("stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def read_log(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else "(no log)"

    def wait_for_mail(self, count: int, *, timeout: float = 60) -> list[Path]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = sorted((self.maildir / "new").glob("*")) if (self.maildir / "new").is_dir() else []
            if len(found) >= count:
                return found
            # Ask the queue manager to look now rather than at its next scan.
            subprocess.run([POSTFIX, "-c", str(self.etc), "flush"], capture_output=True, timeout=30)
            time.sleep(0.5)
        raise AssertionError(f"{count} bounce(s) expected in {self.maildir}\n{self.read_log()}")
