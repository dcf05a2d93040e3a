"""readers' identity: ids never reused, a link key per reader, address keys on IDNA 2008

- subscribers, editions and deliveries hand out no id twice. PostgreSQL's sequences never
  did; SQLite gave the next row the highest id freed by a purge, so a purged reader's links
  (and a delivery's VERP tag) named whoever came next. On SQLite the tables become
  AUTOINCREMENT by rewriting their stored definitions, as 0008 rewrites a CHECK (a table
  rebuild would DROP the old table, and with foreign keys on that first deletes every row
  and, by ON DELETE CASCADE, their deliveries and history). The b-tree is the same: an
  INTEGER PRIMARY KEY is the rowid either way; AUTOINCREMENT only makes SQLite keep the
  highest id ever used in sqlite_sequence, seeded here with today's highest.
- subscribers.link_key: a random value signed into every link of the reader's, so a link
  opens only the row it was made for. subscribers.legacy_links: the row existed before
  links had keys; its id-only unsubscribe links in mail already sent keep working.
- subscribers.email_key is recomputed: NFC local part with ASCII-only lower-casing, @ the
  lower-case IDNA 2008 A-label of the domain (user@straße.de and user@strasse.de were one
  key). Rows whose new keys collide keep their old keys and are reported, never merged; so
  is an address that no longer passes the checks (an encoded-word).
- names and story titles lose invisible format characters (bidi overrides, zero-width).

Revision ID: 0015
Revises: 0014
"""

import logging
import re
from collections.abc import Callable

import sqlalchemy as sa
from alembic import context, op

from worker.text import visible_line, visible_text
from worker.tokens import new_link_key

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

log = logging.getLogger("worker.store.migrations")
TABLES = ("subscribers", "editions", "deliveries")
CHUNK = 1000
subscribers = sa.table("subscribers", sa.column("id", sa.Integer), sa.column("email", sa.String),
                       sa.column("email_key", sa.String), sa.column("name", sa.String),
                       sa.column("confirm_name", sa.String), sa.column("link_key", sa.String),
                       sa.column("legacy_links", sa.Boolean))
stories = sa.table("stories", sa.column("id", sa.Integer), sa.column("title", sa.String))


def upgrade() -> None:
    # Plain ADD COLUMN, never batch mode: for a NOT NULL column with a default batch mode
    # rebuilds the table on SQLite, and the rebuild's DROP TABLE cascades (see above).
    op.add_column("subscribers", sa.Column("link_key", sa.String(length=32), nullable=True))
    op.add_column("subscribers", sa.Column("legacy_links", sa.Boolean(), server_default=sa.false(), nullable=False))
    bind = op.get_bind()
    ids = list(bind.execute(sa.select(subscribers.c.id)).scalars())
    update = subscribers.update().where(subscribers.c.id == sa.bindparam("row_id")) \
        .values(link_key=sa.bindparam("key"), legacy_links=True)
    for start in range(0, len(ids), CHUNK):  # one executemany a chunk, not a round trip a row
        bind.execute(update, [{"row_id": i, "key": new_link_key()} for i in ids[start:start + CHUNK]])
    _rekey(bind, _new_key)
    _clean_text(bind)
    if bind.dialect.name == "sqlite":
        _autoincrement(bind, on=True)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _autoincrement(bind, on=False)
    _rekey(bind, _old_key)
    if bind.dialect.name == "sqlite":
        # Not batch mode: that rebuilds the table (see above). SQLite >= 3.35 drops in place.
        for column in ("link_key", "legacy_links"):
            op.execute(f"ALTER TABLE subscribers DROP COLUMN {column}")
    else:
        with op.batch_alter_table("subscribers", schema=None) as batch_op:
            batch_op.drop_column("legacy_links")
            batch_op.drop_column("link_key")


# The reader's address rules are imported where this data migration runs, not at the top:
# alembic imports every revision to find the head, which the worker's main process does at
# start (worker/tasks.py), and it must not load the feed and reader code for that.
def _new_key(email: str) -> str:
    from worker.readers.subscribers import check_address

    return check_address(email)[1]


def _old_key(email: str) -> str:
    from worker.readers.subscribers import check_address

    return check_address(email)[0].casefold()


def _rekey(bind, key_of: Callable[[str], str]) -> None:
    """Every row's key as `key_of` makes it, except rows whose new key another row would
    share (or that cannot be read as an address now): those keep theirs, and are reported."""
    from worker.readers.subscribers import InvalidSubscriber

    rows = bind.execute(sa.select(subscribers.c.id, subscribers.c.email, subscribers.c.email_key)).all()
    old = {row.id: row.email_key for row in rows}
    new: dict[int, str] = {}
    for row in rows:
        try:
            new[row.id] = key_of(row.email)
        except InvalidSubscriber as exc:
            _report(f"subscriber {row.id}: address kept under its old key, it no longer passes the checks: {exc}")
            new[row.id] = row.email_key
    while True:
        holders: dict[str, list[int]] = {}
        for row_id, key in new.items():
            holders.setdefault(key, []).append(row_id)
        clashes = [ids for ids in holders.values() if len(ids) > 1]
        if not clashes:
            break
        for ids in clashes:
            changed = [i for i in ids if new[i] != old[i]]
            _report(f"subscribers {', '.join(map(str, sorted(ids)))} would share the address key "
                    f"{next(new[i] for i in ids)!r}: kept apart under their old keys, not merged; "
                    "decide which is the reader's (newsletter subscribers show / remove --purge)")
            for row_id in changed:
                new[row_id] = old[row_id]
    moving = {row_id: key for row_id, key in new.items() if key != old[row_id]}
    # Through a placeholder (no @: never a key), so no moment has two rows under one key.
    for row_id in moving:
        bind.execute(subscribers.update().where(subscribers.c.id == row_id).values(email_key=f"#0015-{row_id}"))
    for row_id, key in moving.items():
        bind.execute(subscribers.update().where(subscribers.c.id == row_id).values(email_key=key))


def _clean_text(bind) -> None:
    for row in bind.execute(sa.select(subscribers.c.id, subscribers.c.name, subscribers.c.confirm_name)).all():
        values = {column: visible_text(value).strip() or None for column, value in
                  (("name", row.name), ("confirm_name", row.confirm_name)) if value and visible_text(value) != value}
        if values:
            bind.execute(subscribers.update().where(subscribers.c.id == row.id).values(**values))
    for row in bind.execute(sa.select(stories.c.id, stories.c.title)).all():
        if visible_line(row.title) != row.title:
            bind.execute(stories.update().where(stories.c.id == row.id).values(title=visible_line(row.title)))


def _report(note: str) -> None:
    """To the log and to whoever ran the upgrade (`newsletter db upgrade` prints these)."""
    log.warning("migration 0015: %s", note)
    context.config.attributes.setdefault("notes", []).append(note)


def _autoincrement(bind, *, on: bool) -> None:
    """AUTOINCREMENT on (or off) for TABLES, in their stored definitions (see the docstring)."""
    bind.exec_driver_sql("CREATE TABLE IF NOT EXISTS _nl_sequence_maker (id INTEGER PRIMARY KEY AUTOINCREMENT)")
    bind.exec_driver_sql("DROP TABLE _nl_sequence_maker")  # sqlite_sequence now exists
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    try:
        for table in TABLES:
            sql = bind.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).scalar_one()
            bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?",
                                 (_with_autoincrement(table, sql) if on else _without_autoincrement(table, sql),
                                  table))
        bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        bind.exec_driver_sql("PRAGMA writable_schema = OFF")
    if on:
        for table in TABLES:
            bind.exec_driver_sql("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
            bind.exec_driver_sql(f"INSERT INTO sqlite_sequence (name, seq) SELECT ?, COALESCE(MAX(id), 0) FROM {table}",
                                 (table,))


def _with_autoincrement(table: str, sql: str) -> str:
    """`id INTEGER NOT NULL, ... CONSTRAINT pk PRIMARY KEY (id)` -> `id INTEGER NOT NULL
    CONSTRAINT pk PRIMARY KEY AUTOINCREMENT` (SQLite takes the keyword only on the column)."""
    sql, columns = re.subn(r"(\(\s*id INTEGER NOT NULL)(\s*,)", rf"\1 CONSTRAINT pk_{table} PRIMARY KEY AUTOINCREMENT\2",
                           sql, count=1)
    sql, keys = re.subn(rf"\s*CONSTRAINT pk_{table} PRIMARY KEY \(id\)\s*,", "", sql, count=1)
    if (columns, keys) != (1, 1):
        raise RuntimeError(f"{table}: unexpected definition {sql!r}")
    return sql


def _without_autoincrement(table: str, sql: str) -> str:
    sql, columns = re.subn(rf"(\bid INTEGER NOT NULL) CONSTRAINT pk_{table} PRIMARY KEY AUTOINCREMENT", r"\1", sql,
                           count=1)
    sql, keys = re.subn(r"(\s*)CONSTRAINT ", rf"\1CONSTRAINT pk_{table} PRIMARY KEY (id),\1CONSTRAINT ", sql, count=1)
    if (columns, keys) != (1, 1):
        raise RuntimeError(f"{table}: unexpected definition {sql!r}")
    return sql

