"""Subscriber CSV import, add, remove and list, on both databases."""

import sqlalchemy as sa

from worker.ingest.subscribers import import_csv
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
