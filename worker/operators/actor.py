"""Who is acting now: the operator signed in to the console, or the OS user of a command.

Set once where a person's request enters (the CLI's group, the web app's guard) and read
where a change is written (the reader's history, the audit trail), so no function between
has to pass a name along. A context variable: each web request and each thread has its
own, and `acting_as` puts back what was there before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

MAX_WHO = 64


@dataclass(frozen=True)
class Actor:
    # "anna" (an operator account), "operator token" (NEWSLETTER_OPERATOR_TOKEN),
    # "cli (root)" (the OS user of a command), "loopback" (the console with no credentials).
    who: str
    # 'cli' or 'console'
    via: str


_ACTOR: ContextVar[Actor | None] = ContextVar("newsletter_actor", default=None)


def current_actor() -> Actor | None:
    """None: nobody in particular (the reader, a mail server, the worker)."""
    return _ACTOR.get()


def set_actor(actor: Actor | None):
    """For a caller that cannot use a `with` block (a web request's before/teardown); the
    token goes back to `reset_actor`."""
    return _ACTOR.set(actor)


def reset_actor(token) -> None:
    _ACTOR.reset(token)


@contextmanager
def acting_as(who: str, via: str) -> Iterator[Actor]:
    actor = Actor(who=who[:MAX_WHO], via=via)
    token = _ACTOR.set(actor)
    try:
        yield actor
    finally:
        _ACTOR.reset(token)


def current_by() -> str | None:
    """The name the reader's history records for a change (None: no person)."""
    actor = _ACTOR.get()
    return actor.who if actor is not None else None
