"""A reader's status changes in one place, readers/history.py `change_status`, which writes
the history with it: no other module of worker/ assigns it or updates it in SQL, and the
one door takes a batch of readers in a constant number of statements."""

from __future__ import annotations

import ast
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.data import add_subscribers
from worker.readers.history import change_status
from worker.readers.subscribers import set_status_by_id
from worker.store.db import session_scope
from worker.store.models import ChangeVia, Subscriber, SubscriberEvent, SubscriberStatus

WORKER = Path(__file__).resolve().parent.parent / "worker"
THE_DOOR = WORKER / "readers" / "history.py"
NOW = datetime(2025, 2, 3, 7, tzinfo=UTC)

# Raw SQL that sets subscribers.status ("UPDATE subscribers AS s SET ..., status = ...").
_SQL_UPDATE = re.compile(r"\bupdate\s+subscribers\b[^;]*?\bset\b[^;]*?\bstatus\s*=", re.IGNORECASE | re.DOTALL)
# Calls through which SQLAlchemy writes columns: update(...).values(...), Query.update({...}),
# session.execute(update(Subscriber), [{...}]).
_WRITING_CALLS = {"values", "update", "execute", "ordered_values"}


def status_writes(source: str) -> list[tuple[int, str]]:
    """(line, what) for each place in `source` that sets a status outside the door."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for part in ast.walk(target):
                    if isinstance(part, ast.Attribute) and part.attr == "status":
                        found.append((node.lineno, "assigns .status"))
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "setattr" and len(node.args) > 1 and _is_status(node.args[1]):
                found.append((node.lineno, "setattr status"))
            if name in _WRITING_CALLS:
                if any(k.arg == "status" for k in node.keywords):
                    found.append((node.lineno, f".{name}(status=...)"))
                for arg in [*node.args, *(k.value for k in node.keywords if k.arg is None)]:
                    if any(isinstance(d, ast.Dict) and any(_is_status(k) for k in d.keys if k is not None)
                           for d in ast.walk(arg)):
                        found.append((node.lineno, f".{name}({{'status': ...}})"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _SQL_UPDATE.search(node.value):
            found.append((node.lineno, "UPDATE subscribers SET status in SQL"))
    return found


def _is_status(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value == "status"


def test_no_module_but_the_door_sets_a_readers_status():
    offenders = {
        f"{path.relative_to(WORKER.parent)}:{line}: {what}"
        for path in sorted(WORKER.rglob("*.py")) if path != THE_DOOR
        for line, what in status_writes(path.read_text(encoding="utf-8"))
    }
    assert not offenders, "a reader's status changes only through worker/readers/history.py change_status:\n" + \
        "\n".join(sorted(offenders))
    assert status_writes(THE_DOOR.read_text(encoding="utf-8"))  # the scan does see the door's own write


@pytest.mark.parametrize("source", [
    # What the ledger did before: a raw UPDATE that wrote no history.
    "conn.execute(update(Subscriber).where(Subscriber.id == i).values(status=BOUNCED, status_changed_at=now))",
    "row.status = SubscriberStatus.BOUNCED.value",
    "row.status, row.regions = 'bounced', ''",
    "setattr(row, 'status', 'bounced')",
    "stmt.values(**{'status': 'bounced'})",
    "session.query(Subscriber).filter_by(id=1).update({Subscriber.status: 'x', 'status': 'bounced'})",
    "session.execute(update(Subscriber), [{'id': 1, 'status': 'bounced'}])",
    "cur.execute('UPDATE subscribers SET status = %s WHERE id = %s', ('bounced', 1))",
    "sql = f'''UPDATE subscribers AS s\n SET status_changed_at = now(), status = '{x}' '''",
], ids=["core-update", "attribute", "tuple", "setattr", "values-dict", "query-update", "bulk-by-id", "raw-sql",
        "f-string"])
def test_the_scan_finds_each_way_of_writing_a_status(source):
    assert status_writes(source)


def test_the_scan_leaves_reading_a_status_and_other_tables_alone():
    assert not status_writes(
        "active = Subscriber.status == 'active'\n"
        "select(Subscriber).where(Subscriber.status.in_(['active']))\n"
        "update(D).values(state=SENDING, skip_reason=case((active, None), else_=Subscriber.status))\n"
        "SQL = 'UPDATE deliveries AS d SET skip_reason = s.status FROM subscribers AS s WHERE s.status = 1'\n"
        "print({'status': row.status})\n")


def _events(engine) -> list[tuple]:
    with session_scope(engine) as session:
        return [tuple(r) for r in session.execute(
            sa.select(SubscriberEvent.subscriber_id, SubscriberEvent.kind, SubscriberEvent.via, SubscriberEvent.status,
                      SubscriberEvent.regions, SubscriberEvent.note).order_by(SubscriberEvent.id))]


def test_many_readers_change_in_two_statements_each_with_its_event(engine):
    readers = add_subscribers(engine, 7)
    ids = [i for i, _, _ in readers]
    set_status_by_id(engine, ids[-1], SubscriberStatus.UNSUBSCRIBED, via=ChangeVia.CLI)  # left: stays as they are
    statements = []

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement.split()[0].upper())

    for batch in ([ids[0]], ids[1:]):
        statements.clear()
        sa.event.listen(engine, "before_cursor_execute", count)
        try:
            with engine.begin() as conn:
                changed = change_status(conn, batch, SubscriberStatus.BOUNCED, was=SubscriberStatus.ACTIVE,
                                        via=ChangeVia.REFUSED_AT_SEND, at=NOW,
                                        note={i: f"refused at send 55{n % 3}" for n, i in enumerate(ids)})
        finally:
            sa.event.remove(engine, "before_cursor_execute", count)
        assert changed == [i for i in batch if i != ids[-1]]
        assert statements == ["UPDATE", "INSERT"]
    regions = {i: r for i, _, r in readers}
    assert _events(engine)[1:] == [(i, "bounced", "refused-at-send", "bounced", regions[i], f"refused at send 55{n % 3}")
                               for n, i in enumerate(ids[:-1])]
    with session_scope(engine) as session:
        got = dict(session.execute(sa.select(Subscriber.id, Subscriber.status)).all())
        assert session.scalar(sa.select(Subscriber.status_changed_at).where(Subscriber.id == ids[0])) == NOW
    assert got == {**{i: "bounced" for i in ids[:-1]}, ids[-1]: "unsubscribed"}


def test_a_change_to_the_same_status_or_of_nobody_runs_nothing(engine):
    (reader, _, _), = add_subscribers(engine, 1)
    with engine.begin() as conn:
        assert change_status(conn, [reader], SubscriberStatus.ACTIVE, was=SubscriberStatus.ACTIVE,
                             via=ChangeVia.CLI, at=NOW) == []
        assert change_status(conn, [], SubscriberStatus.BOUNCED, was=SubscriberStatus.ACTIVE,
                             via=ChangeVia.CLI, at=NOW) == []
    assert _events(engine) == []
