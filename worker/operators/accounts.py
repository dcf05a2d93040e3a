"""Named operators: a name and a token printed once, kept only as a slow hash.

A token is `NAME.SECRET` (SECRET: 32 random bytes, URL-safe base64), so the one value an
operator pastes says whose it is: Bearer `NAME.SECRET`, or basic auth with any user name
and `NAME.SECRET` as the password (or the name as user and SECRET alone). The hash is
scrypt (RFC 7914, standard library) with a random salt per account: a copy of the
database gives nobody a token.

scrypt is slow on purpose, tens of milliseconds a check; `Verifier` remembers the answer
for a presented token against a stored hash (a bounded cache keyed by both), so a console
page costs one check per browser session, not one per request. The account row is read
on every request: a removed operator is refused at once, whatever the cache holds.

Wrong tokens for a real name would each cost a check: a process spends at most
MAX_FAILED_CHECKS of them per FAILED_WINDOW seconds, and refuses further unknown tokens
unchecked until the window passes (a token already known good still opens at once).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime
from threading import Lock

from sqlalchemy import Engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError

from worker.clock import utcnow
from worker.errors import NewsletterError
from worker.operators.actor import current_by
from worker.operators.audit import audit
from worker.store.db import session_scope
from worker.store.models import Operator

log = logging.getLogger(__name__)
NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
# scrypt's cost: 16 MiB and tens of milliseconds per check on a small server (OWASP's
# minimum is N=2^17 with r=8 for passwords; these tokens carry 256 random bits, so no
# guess is ever cheap enough to matter and the cost only slows a stolen database's use).
N, R, P = 2**14, 8, 1
CACHE = 256
MAX_FAILED_CHECKS = 20
FAILED_WINDOW = 10.0


class OperatorError(NewsletterError):
    """An operator name that cannot be used, or one that is not there."""


@dataclass(frozen=True)
class OperatorRow:
    name: str
    created_at: datetime
    created_by: str
    last_seen_at: datetime | None


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise OperatorError(f"{name!r} cannot be an operator name: use 1 to 40 of a-z, 0-9, '_' and '-', "
                            "starting with a letter or digit")
    return name


def hash_token(secret: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=N, r=R, p=P, dklen=32)
    return "$".join(["scrypt", str(N), str(R), str(P), _b64(salt), _b64(digest)])


def token_matches(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest + "==")
        found = hashlib.scrypt(secret.encode(), salt=base64.urlsafe_b64decode(salt + "=="), n=int(n), r=int(r),
                               p=int(p), dklen=len(expected), maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(found, expected)


def add_operator(engine: Engine, name: str) -> str:
    """Make an account; the token, to print once (it is not kept)."""
    check_name(name)
    secret = secrets.token_urlsafe(32)
    try:
        with session_scope(engine) as session:
            session.add(Operator(name=name, token_hash=hash_token(secret), created_at=utcnow(),
                                 created_by=current_by() or "unknown"))
            session.flush()
            audit(session, "operator-added", name)
    except IntegrityError:
        raise OperatorError(f"there is already an operator named {name}: remove it first to make a new "
                            "token") from None
    return f"{name}.{secret}"


def remove_operator(engine: Engine, name: str) -> None:
    with session_scope(engine) as session:
        if not session.execute(delete(Operator).where(Operator.name == name)).rowcount:
            raise OperatorError(f"there is no operator named {name!r}")
        audit(session, "operator-removed", name)


def list_operators(engine: Engine) -> list[OperatorRow]:
    with session_scope(engine) as session:
        return [OperatorRow(name=o.name, created_at=o.created_at, created_by=o.created_by,
                            last_seen_at=o.last_seen_at)
                for o in session.scalars(select(Operator).order_by(Operator.name))]


def any_operator(engine: Engine) -> bool:
    with session_scope(engine) as session:
        return bool(session.scalar(select(func.count()).select_from(select(Operator.id).limit(1).subquery())))


def split_token(presented: str, user: str | None = None) -> tuple[str, str] | None:
    """(name, secret) from `NAME.SECRET`, or from a basic-auth user and a bare SECRET."""
    name, dot, secret = presented.rpartition(".")
    if not dot:
        name, secret = user or "", presented
    if not NAME.fullmatch(name) or not secret or len(secret) > 200:
        return None
    return name, secret


class Verifier:
    """Checks presented tokens against the accounts (module docstring)."""

    def __init__(self, engine: Engine, *, seen_every: float = 300.0):
        self.engine = engine
        self._answers: OrderedDict[tuple[str, str, bytes], bool] = OrderedDict()
        self._lock = Lock()
        self._seen: dict[str, datetime] = {}
        self._seen_every = seen_every
        self._failed: deque[float] = deque(maxlen=MAX_FAILED_CHECKS)
        self._quiet_until = 0.0

    def exists(self) -> bool:
        return any_operator(self.engine)

    def verify(self, presented: str, user: str | None = None) -> str | None:
        """The operator's name, or None."""
        parts = split_token(presented, user)
        if parts is None:
            return None
        name, secret = parts
        with session_scope(self.engine) as session:
            stored = session.scalar(select(Operator.token_hash).where(Operator.name == name))
        if stored is None:
            return None
        key = (name, stored, hashlib.sha256(secret.encode()).digest())
        with self._lock:
            known = self._answers.get(key)
            if known is not None:
                self._answers.move_to_end(key)
        if known is None:
            if not self._may_check():
                return None
            known = token_matches(secret, stored)
            if not known:
                self._failed.append(time.monotonic())
            with self._lock:
                self._answers[key] = known
                while len(self._answers) > CACHE:
                    self._answers.popitem(last=False)
        if known:
            self._mark_seen(name)
        return name if known else None

    def _may_check(self) -> bool:
        now = time.monotonic()
        if len(self._failed) == MAX_FAILED_CHECKS and now - self._failed[0] < FAILED_WINDOW:
            if now >= self._quiet_until:  # one line per window, not one per refused request
                self._quiet_until = now + FAILED_WINDOW
                log.warning("operator sign-in: %s wrong tokens within %s s; unknown tokens are refused "
                            "unchecked for now", MAX_FAILED_CHECKS, FAILED_WINDOW)
            return False
        return True

    def _mark_seen(self, name: str) -> None:
        now = utcnow()
        last = self._seen.get(name)
        if last is not None and (now - last).total_seconds() < self._seen_every:
            return
        self._seen[name] = now
        with session_scope(self.engine) as session:
            session.execute(update(Operator).where(Operator.name == name).values(last_seen_at=now))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
