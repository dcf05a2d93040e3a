"""Subscriber CSV import, add, remove and list, on both databases."""

import sqlalchemy as sa

from worker.readers.subscribers import import_csv
from worker.store.db import session_scope
from worker.store.models import Subscriber

LONG = "a" * 290 + "@example.org"


def _rows(engine):
    with session_scope(engine) as session:
        return {s.email: (s.name, s.regions, s.status) for s in session.scalars(sa.select(Subscriber))}


def _csv(tmp_path, body):
    path = tmp_path / "subs.csv"
    path.write_text(body, encoding="utf-8")
    return path


def test_bad_rows_are_reported_by_line_and_valid_rows_kept(engine, tmp_path):
    path = _csv(tmp_path, (
        "email,name,regions\n"
        "anna@example.org,Anna,RU UA\n"                    # 2 ok
        "no-at-sign.example.org,Bob,RU\n"                  # 3 no @
        "  carl@example.org  , Carl ,DE;FR\n"              # 4 trailing spaces: trimmed, ok
        "ANNA@Example.ORG,Anna Again,GB\n"                 # 5 mixed-case duplicate of line 2
        "jürgen@bücher.example,Jürgen,DE\n"                # 6 IDN domain ok
        f"{LONG},Long,RU\n"                                # 7 300-character address
        '"dora@example.org","Dora\r\nBcc: x@y",RU\n'       # 8 CR/LF in name (quoted, spans two lines)
        "erik@example.org,Erik,XX\n"                       # 10 unknown region
        "fay@example.org,Fay,\n"                           # 11 no regions
    ))
    report = import_csv(engine, path)
    assert report.added == 3
    assert [(line, reason.split(":")[0]) for line, reason in report.rejected] == [
        (3, "invalid email address 'no-at-sign.example.org'"),
        (5, "duplicate of line 2"),
        (7, f"invalid email address '{LONG[:80]}'"),
        (8, "name contains a line break or control character"),
        (10, "unknown region code 'XX'"),
        (11, "no regions"),
    ]
    assert "must have an @-sign" in report.rejected[0][1]
    assert "too long" in report.rejected[2][1]
    assert _rows(engine) == {
        "anna@example.org": ("Anna", "RU UA", "active"),
        "carl@example.org": ("Carl", "DE FR", "active"),
        "jürgen@bücher.example": ("Jürgen", "DE", "active"),
    }


def test_reimport_never_resubscribes_and_updates_active_rows(engine, tmp_path, run_cli):
    path = _csv(tmp_path, "email,name,regions\nanna@example.org,Anna,RU\nbob@example.org,Bob,UA\n")
    assert import_csv(engine, path).added == 2
    assert run_cli("subscribers", "remove", "Anna@Example.org").code == 0
    path.write_text("email,name,regions\nanna@example.org,Anna,RU\nbob@example.org,Bobby,UA PL\n")
    report = import_csv(engine, path)
    assert (report.added, report.updated, report.unchanged, report.suppressed) == (0, 1, 0, 1)
    assert _rows(engine) == {
        "anna@example.org": ("Anna", "RU", "unsubscribed"),
        "bob@example.org": ("Bobby", "UA PL", "active"),
    }


def test_a_csv_without_the_header_is_a_usage_error(run_cli, tmp_path):
    run_cli("db", "upgrade")
    path = _csv(tmp_path, "address,regions\nanna@example.org,RU\n")
    result = run_cli("subscribers", "import", str(path))
    assert result.code == 2
    assert result.err.strip() == (
        f"error: {path}: the header must be email,name,regions (got 'address,regions')"
    )


def test_cli_import_reports_and_exits_1_on_rejections(run_cli, tmp_path):
    path = _csv(tmp_path, "email,name,regions\nanna@example.org,Anna,RU\nbad,Bad,RU\n")
    result = run_cli("subscribers", "import", str(path))
    assert result.code == 1
    assert result.out.strip() == (
        "subscribers: 1 added, 0 updated, 0 unchanged, 0 kept unsubscribed, 1 rejected"
    )
    assert result.err.startswith(f"rejected: {path}: line 3: invalid email address 'bad'")


def test_add_remove_list(run_cli):
    assert run_cli("subscribers", "add", "Zoe@Example.org", "--regions", "ua,ru", "--name", "Zoë").out == (
        "Zoe@example.org: added (UA RU)\n"
    )
    assert run_cli("subscribers", "add", "zoe@example.org", "--regions", "UA").out == (
        "zoe@example.org: updated (UA)\n"
    )
    bad_name = run_cli("subscribers", "add", "x@example.org", "--regions", "RU", "--name", "A\nBcc: b@c")
    assert (bad_name.code, bad_name.err) == (2, "error: name contains a line break or control character\n")
    bad_region = run_cli("subscribers", "add", "x@example.org", "--regions", "RU,XX")
    assert (bad_region.code, bad_region.err) == (2, "error: unknown region code 'XX'\n")
    listed = run_cli("subscribers", "list", "--json")
    assert listed.out == '{"email": "zoe@example.org", "name": "Zoë", "regions": ["UA"], "status": "active"}\n'
    assert run_cli("subscribers", "remove", "ZOE@example.org").out == "ZOE@example.org: unsubscribed\n"
    again = run_cli("subscribers", "add", "zoe@example.org", "--regions", "UA")
    assert again.code == 2 and "is unsubscribed; pass --resubscribe" in again.err
    assert run_cli("subscribers", "add", "zoe@example.org", "--regions", "UA", "--resubscribe").code == 0
    assert run_cli("subscribers", "remove", "nobody@example.org").code == 1
    assert run_cli("subscribers", "remove", "zoe@example.org", "--purge").out == "zoe@example.org: purged\n"
    assert "0 subscribers" in run_cli("subscribers", "list").out


# Issue 21: address keys, encoded-words, invisible characters, migration 0015


def test_address_keys_keep_different_mailboxes_apart():
    from worker.readers.subscribers import check_address

    def key(address):
        return check_address(address)[1]

    # IDNA 2008: ß is its own letter (xn--strae-oqa.de), not "ss" as a case fold makes it.
    assert key("user@straße.de") == "user@xn--strae-oqa.de" != key("user@strasse.de") == "user@strasse.de"
    assert key("user@xn--strae-oqa.de") == key("USER@Straße.DE")
    # UTS 46 mapping as email-validator does it: full-width letters, upper case.
    assert key("a@ｅｘａｍｐｌｅ.ORG") == key("A@example.org") == "a@example.org"
    # The local part: NFC, and only ASCII letters lower-cased (a server may tell ß from ss).
    assert key("u\u0308ser@example.org") == key("\u00fcser@example.org")
    assert key("straße@example.org") != key("strasse@example.org")
    assert key("Ünï@example.org") == "Ünï@example.org" != key("ünï@example.org")


def test_an_operators_add_of_the_real_address_never_updates_a_lookalike(engine, tmp_path):
    from worker.readers.subscribers import add_subscriber, make_input

    assert add_subscriber(engine, make_input("user@straße.de", "Mallory", "RU")) == "added"
    assert add_subscriber(engine, make_input("user@strasse.de", "User", "UA")) == "added"
    report = import_csv(engine, _csv(tmp_path, "email,name,regions\nUSER@STRASSE.DE,User,UA\n"))
    assert (report.added, report.updated, report.unchanged) == (0, 1, 0)  # respelled as given
    assert _rows(engine) == {"user@straße.de": ("Mallory", "RU", "active"), "USER@strasse.de": ("User", "UA", "active")}


ENCODED = "=?utf-8?b?dmljdGltQGV4YW1wbGUub3Jn?=@example.org"


def test_encoded_word_addresses_are_refused_by_import_and_add(engine, tmp_path, run_cli):
    path = _csv(tmp_path, f"email,name,regions\nanna@example.org,Anna,RU\n{ENCODED},X,RU\n\"=?UTF-8?Q?x?=\"@example.org,Y,RU\n")
    report = import_csv(engine, path)
    assert report.added == 1
    assert [line for line, _ in report.rejected] == [3, 4]
    assert all("an encoded-word (=?...?=) is not an address" in reason for _, reason in report.rejected)
    added = run_cli("subscribers", "add", ENCODED, "--regions", "RU")
    assert added.code == 2
    assert added.err == f"error: invalid email address {ENCODED!r}: an encoded-word (=?...?=) is not an address\n"
    assert set(_rows(engine)) == {"anna@example.org"}


def test_names_lose_invisible_format_characters_at_input(engine, tmp_path):
    from worker.readers.subscribers import check_name

    assert check_name("Bob\u202etxt.exe") == "Bobtxt.exe"
    assert check_name("\ufeff\u200bAnna\u2066\u2069 \u200eK\u200f") == "Anna K"
    assert check_name("\u200b\u202e") is None
    # The joiners stay: Persian and Indic names, emoji sequences need them.
    assert check_name("مهر\u200cآوا") == "مهر\u200cآوا"
    report = import_csv(engine, _csv(tmp_path, "email,name,regions\nbob@example.org,\u202eBob\u200b,RU\n"))
    assert report.added == 1 and _rows(engine)["bob@example.org"][0] == "Bob"


def test_subdivision_flags_keep_their_tag_sequence_and_stray_tags_go():
    from worker.readers.subscribers import check_name
    from worker.text import visible_text

    scotland = "\U0001F3F4\U000E0067\U000E0062\U000E0073\U000E0063\U000E0074\U000E007F"
    wales = "\U0001F3F4\U000E0067\U000E0062\U000E0077\U000E006C\U000E0073\U000E007F"
    assert check_name(f"Anna {scotland}") == f"Anna {scotland}"
    assert visible_text(f"{wales}\u202e{scotland}") == wales + scotland
    # Tags anywhere else hide text (ASCII smuggled as invisible tags): they go.
    assert visible_text("Bob\U000E0041\U000E0042\U000E007F") == "Bob"
    assert visible_text("\U0001F3F4\U000E0067\U000E0062") == "\U0001F3F4"  # never closed: no flag
    assert visible_text("\U0001F3F4") == "\U0001F3F4"


def _at_0014(engine):
    from alembic import command

    from worker.store.db import _alembic_config

    command.downgrade(_alembic_config(engine), "0014")


def test_migration_0015_rekeys_reports_collisions_and_never_merges(db_url, run_cli):
    from datetime import datetime

    from worker.store.db import create_db_engine

    engine = create_db_engine(db_url)
    _at_0014(engine)
    t = datetime(2025, 1, 1)
    rows = [  # (email, the key the code before stored)
        ("user@straße.de", "user@strasse.de"),     # rekeyed to its A-label
        ("Anna@Example.org", "anna@example.org"),   # unchanged
        ("a@example.net", "a@example.net"),         # these two would share a@example.net: kept, reported
        ("A@EXAMPLE.net", "A@EXAMPLE.net"),
    ]
    with engine.begin() as conn:
        for email, key in rows:
            conn.execute(sa.text("INSERT INTO subscribers (email, email_key, name, regions, status, created_at, "
                                 "updated_at) VALUES (:e, :k, :n, 'RU', 'active', :t, :t)"),
                         {"e": email, "k": key, "n": "Bob\u202e\u200b" if email.startswith("Anna") else None, "t": t})
        conn.execute(sa.text("INSERT INTO stories (guid, url, title, summary_html, summary_text, published_at, "
                             "source, created_at, updated_at) VALUES ('g', 'https://x.example/', :title, '', '', :t, "
                             "'', :t, :t)"), {"title": "Breaking\u202e news\ufeff", "t": t})
        conn.execute(sa.text("INSERT INTO editions (key, kind, label, window_start, window_end, state, total, "
                             "created_at) VALUES ('k', 'weekly', 'l', :t, :t, 'done', 1, :t)"), {"t": t})
        conn.execute(sa.text("INSERT INTO deliveries (edition_id, subscriber_id, regions, state, attempts, "
                             "updated_at) SELECT e.id, s.id, 'RU', 'sent', 1, :t FROM editions e, subscribers s"),
                     {"t": t})
    result = run_cli("db", "upgrade")
    assert result.code == 0
    ids = {}
    with engine.begin() as conn:
        found = conn.execute(sa.text("SELECT id, email, email_key, name, link_key, legacy_links FROM subscribers "
                                     "ORDER BY id")).all()
        ids = {row.email: row.id for row in found}
        assert [(row.email, row.email_key) for row in found] == [
            ("user@straße.de", "user@xn--strae-oqa.de"), ("Anna@Example.org", "anna@example.org"),
            ("a@example.net", "a@example.net"), ("A@EXAMPLE.net", "A@EXAMPLE.net")]
        assert [row.name for row in found] == [None, "Bob", None, None]
        assert all(len(row.link_key) == 16 and row.legacy_links for row in found)
        assert len({row.link_key for row in found}) == 4
        assert conn.execute(sa.text("SELECT title FROM stories")).scalar() == "Breaking news"
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar() == 4  # nothing cascaded away
    assert result.out.splitlines()[1:] == [
        f"note: subscribers {ids['a@example.net']}, {ids['A@EXAMPLE.net']} would share the address key "
        "'a@example.net': kept apart under their old keys, not merged; decide which is the reader's "
        "(newsletter subscribers show / remove --purge)"]
    # The highest id ever used is never handed out again, now on SQLite too.
    last = max(ids.values())
    assert run_cli("subscribers", "remove", "a@example.net", "--purge").code == 0
    with engine.begin() as conn:
        conn.execute(sa.text(f"DELETE FROM subscribers WHERE id = {last}"))
    assert run_cli("subscribers", "add", "new@example.org", "--regions", "RU").code == 0
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT id, legacy_links FROM subscribers WHERE email = 'new@example.org'")
                            ).one() == (last + 1, False)
        if engine.dialect.name == "sqlite":
            assert conn.execute(sa.text("PRAGMA integrity_check")).scalar() == "ok"
    engine.dispose()
