"""The command line as a newcomer meets it: version, config, typos in the environment,
--debug anywhere, database URLs, listing what is stored, one answer to a missing file,
and read-only commands that leave nothing behind."""

import json
from importlib.metadata import version
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import EXAMPLES
from worker.store.db import MissingDatabase

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A fresh working directory with the default (relative) database URL."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _default_db(monkeypatch):
    monkeypatch.delenv("NEWSLETTER_DATABASE_URL", raising=False)


# --- version, config, environment ----------------------------------------------------------


@sqlite_only
def test_version(run_cli):
    result = run_cli("--version")
    assert (result.code, result.out) == (0, f"newsletter {version('newsletter-worker')}\n")
    assert run_cli("-V").out == result.out


@sqlite_only
def test_config_shows_each_value_and_where_it_came_from_with_secrets_masked(run_cli, elsewhere, monkeypatch):
    _default_db(monkeypatch)
    Path("config").mkdir()
    Path("config/newsletter.toml").write_text('smtp_host = "relay.example"\nsmtp_port = 2525\n')
    result = run_cli("config", env={"NEWSLETTER_SMTP_PORT": "587", "NEWSLETTER_SMTP_PASSWORD": "hunter2",
                                    "NEWSLETTER_BROKER_URL": "redis://:brokerpw@redis.example:6379/0"})
    assert result.code == 0, result.err
    lines = {line.split()[0]: line for line in result.out.splitlines() if line.startswith("NEWSLETTER_")}
    config_file = elsewhere / "config" / "newsletter.toml"
    assert lines["NEWSLETTER_SMTP_HOST"].split(None, 1)[1] == f"relay.example  [file {config_file}]"
    assert lines["NEWSLETTER_SMTP_PORT"].split(None, 1)[1] == "587  [env]"
    assert lines["NEWSLETTER_TIMEZONE"].split(None, 1)[1] == "UTC  [default]"
    assert lines["NEWSLETTER_SMTP_PASSWORD"].split(None, 1)[1] == "******** (set)  [env]"
    assert lines["NEWSLETTER_SECRET_KEY"].split(None, 1)[1] == "(not set)  [default]"
    assert lines["NEWSLETTER_BROKER_URL"].split(None, 1)[1] == "redis://:***@redis.example:6379/0  [env]"
    assert "hunter2" not in result.out + result.err and "brokerpw" not in result.out + result.err
    assert f"config file: {config_file} (found in the working directory)" in result.out
    # The relative default database, resolved: where it is, not where it might be.
    assert f"database: SQLite {elsewhere / 'var' / 'newsletter.db'} (not created yet: run `newsletter db upgrade`)" \
        in result.out
    assert not (elsewhere / "var").exists()


@sqlite_only
def test_config_json_hides_secrets_too(run_cli, elsewhere, monkeypatch):
    _default_db(monkeypatch)
    result = run_cli("config", "--json", env={"NEWSLETTER_SECRET_KEY": "s3cr3t-key",
                                              "NEWSLETTER_DATABASE_URL": "postgresql://app:dbpw@db.example/news"})
    data = json.loads(result.out)
    settings = {row["env"]: row for row in data["settings"]}
    assert settings["NEWSLETTER_SECRET_KEY"]["value"] == "******** (set)"
    assert settings["NEWSLETTER_DATABASE_URL"] == {
        "setting": "database_url", "env": "NEWSLETTER_DATABASE_URL", "value": "postgresql://app:***@db.example/news",
        "source": "NEWSLETTER_DATABASE_URL"}
    assert data["database"]["path"] is None
    assert "s3cr3t" not in result.out and "dbpw" not in result.out


@sqlite_only
def test_a_variable_like_no_setting_is_warned_about(run_cli):
    result = run_cli("status", env={"NEWSLETTER_FROBNICATE": "1", "NEWSLETTER_CONFIG": "", "NEWSLETTER_DEBUG": "",
                                    "NEWSLETTER_TEST_ANYTHING": "1", "NEWSLETTER_BENCH_ANYTHING": "1"})
    assert result.code == 0
    assert result.err == "warning: NEWSLETTER_FROBNICATE is not a setting and is ignored\n"
    assert result.out == "no editions yet\n"


@sqlite_only
@pytest.mark.parametrize("command", [("status",), ("config",), ("db", "upgrade"), ("check",), ("demo",),
                                     ("send", "--week", "2025-W05", "--dry-run")])
def test_a_misspelt_setting_is_an_error_for_every_command(run_cli, tmp_path, command):
    """NEWSLETTER_DATABSE_URL used to be warned about, and a new SQLite database made in its place."""
    here = tmp_path / "here"
    here.mkdir()
    result = run_cli(*command, env={"NEWSLETTER_DATABSE_URL": f"sqlite:///{here / 'wanted.db'}",
                                    "NEWSLETTER_FROBNICATE": "1",
                                    "NEWSLETTER_DATABASE_URL": f"sqlite:///{here / 'default.db'}"})
    assert (result.code, result.out) == (2, "")
    assert result.err == "error: NEWSLETTER_DATABSE_URL is not a setting: did you mean NEWSLETTER_DATABASE_URL?\n"
    assert list(here.iterdir()) == []


@sqlite_only
def test_debug_is_accepted_after_the_command(run_cli, monkeypatch, tmp_path):
    assert run_cli("status", "--debug").out == "no editions yet\n"
    missing = f"sqlite:///{tmp_path / 'nowhere' / 'news.db'}"
    plain = run_cli("status", env={"NEWSLETTER_DATABASE_URL": missing})
    assert plain.code == 2 and plain.err.startswith("error: no database at ") and "Traceback" not in plain.err
    with pytest.raises(MissingDatabase):  # --debug: the exception itself, for its traceback
        run_cli("status", "--debug")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_postgres_url_is_accepted(run_cli, db_url):
    url = sa.make_url(db_url).set(drivername="postgres").render_as_string(hide_password=False)
    assert url.startswith("postgres://")
    result = run_cli("status", env={"NEWSLETTER_DATABASE_URL": url})
    assert (result.code, result.out, result.err) == (0, "no editions yet\n", "")


@sqlite_only
def test_an_unsupported_database_url_names_what_is(run_cli):
    result = run_cli("status", env={"NEWSLETTER_DATABASE_URL": "mongodb://localhost/news"})
    assert result.code == 2
    assert "use sqlite:///PATH or postgresql://USER@HOST/NAME" in result.err
    assert len(result.err.splitlines()) == 1


# --- listing what is stored ------------------------------------------------------------------


def test_stories_list_filters_by_week_and_region_and_its_json_imports_back(run_cli, sample_engine, tmp_path):
    result = run_cli("stories", "list", "--week", "2025-W05", "--region", "ru", "--json")
    assert result.code == 0, result.err
    stories = [json.loads(line) for line in result.out.splitlines()]
    assert stories and all("RU" in s["regions"] for s in stories)
    assert all("2025-01-27" <= s["published_at"][:10] < "2025-02-03" for s in stories)
    assert [s["published_at"] for s in stories] == sorted((s["published_at"] for s in stories), reverse=True)
    assert set(stories[0]) == {"id", "url", "title", "summary", "regions", "published_at", "source", "image_url",
                               "language", "clicks"}
    assert {story["clicks"] for story in stories} == {0}  # nobody opened anything yet
    back = tmp_path / "back.jsonl"
    back.write_text(result.out)
    reimported = run_cli("stories", "import", str(back))
    assert reimported.out == f"stories: 0 added, 0 updated, {len(stories)} unchanged, 0 rejected\n"

    text = run_cli("stories", "list", "--week", "2025-W05", "--region", "RU")
    assert text.out.splitlines()[0].split() == ["published", "regions", "title", "source", "opened", "id"]
    assert text.out.endswith(f"{len(stories)} stories in 2025-W05 for RU\n")
    every = run_cli("stories", "list", "--json").out.splitlines()
    assert len(every) == len(json.loads((EXAMPLES / "stories.json").read_text()))
    assert run_cli("stories", "list", "--region", "XX").err == "error: --region: unknown region code 'XX'\n"


def test_subscribers_list_by_region_and_per_region_counts(run_cli, sample_engine):
    ru = [json.loads(line) for line in run_cli("subscribers", "list", "--region", "RU", "--json").out.splitlines()]
    assert ru and all("RU" in s["regions"] for s in ru)
    everyone = [json.loads(line) for line in run_cli("subscribers", "list", "--json").out.splitlines()]
    assert len(ru) == sum("RU" in s["regions"] for s in everyone)

    rows = [json.loads(line) for line in run_cli("subscribers", "regions", "--json").out.splitlines()]
    active = [s for s in everyone if s["status"] == "active"]
    assert {r["region"]: r["active"] for r in rows} == {
        code: sum(code in s["regions"] for s in active) for s in active for code in s["regions"]}
    ru_row = next(r for r in rows if r["region"] == "RU")
    assert ru_row["name"] == "Russia"
    text = run_cli("subscribers", "regions").out
    assert text.splitlines()[0].split() == ["region", "name", "active"]
    assert f"{len(rows)} regions followed by {len(active)} active subscribers" in text


def test_piped_lists_are_not_cut_at_80_columns(run_cli):
    long = "a.very.long.address.that.goes.on." + "x" * 60 + "@example.org"
    assert run_cli("subscribers", "add", long, "--regions", "RU,UA,DE,FR,GB", "--name", "[bold]Name[/] :smile:").code == 0
    out = run_cli("subscribers", "list").out  # captured: not a terminal
    line = next(line for line in out.splitlines() if long in line)
    assert "[bold]Name[/] :smile:" in line and "RU UA DE FR GB" in line and "active" in line


# --- one answer to a missing file ------------------------------------------------------------


def test_both_imports_answer_a_missing_file_the_same_way(run_cli, tmp_path):
    stories = run_cli("stories", "import", "missing.json")
    subscribers = run_cli("subscribers", "import", "missing.csv")
    assert (stories.code, stories.err) == (2, "error: cannot read missing.json: No such file or directory\n")
    assert (subscribers.code, subscribers.err) == (2, "error: cannot read missing.csv: No such file or directory\n")
    assert run_cli("stories", "import", str(tmp_path)).err == f"error: cannot read {tmp_path}: Is a directory\n"


# --- which database, and nothing left behind -------------------------------------------------


@sqlite_only
@pytest.mark.parametrize("args", [
    ["status"], ["status", "weekly-2025-W05"], ["subscribers", "list"], ["subscribers", "regions"],
    ["stories", "list"], ["preview", "--regions", "RU"], ["send", "--week", "2025-W05", "--dry-run"],
    ["stories", "import", "missing.json"],
])
def test_read_only_commands_elsewhere_create_nothing_and_say_which_database(run_cli, elsewhere, monkeypatch, args):
    _default_db(monkeypatch)
    result = run_cli(*args)
    assert result.code == 2
    if args[-1] != "missing.json":
        expected = elsewhere / "var" / "newsletter.db"
        assert result.err == (
            f"error: no database at {expected} (NEWSLETTER_DATABASE_URL=sqlite:///var/newsletter.db, relative to "
            "the working directory): run `newsletter db upgrade` to create it, or set NEWSLETTER_DATABASE_URL\n")
    assert list(elsewhere.iterdir()) == []


@sqlite_only
def test_config_touches_no_database(run_cli, elsewhere, monkeypatch):
    _default_db(monkeypatch)
    assert run_cli("config").code == 0
    assert list(elsewhere.iterdir()) == []


@sqlite_only
def test_db_upgrade_says_where_it_created_the_database(run_cli, elsewhere, monkeypatch):
    _default_db(monkeypatch)
    first = run_cli("db", "upgrade")
    assert first.code == 0, first.err
    assert first.out.splitlines()[0] == f"created new database at {elsewhere / 'var' / 'newsletter.db'}"
    second = run_cli("db", "upgrade")
    assert "created" not in second.out and second.out.startswith("schema already at revision")
    assert run_cli("status").out == "no editions yet\n"


def test_a_preview_of_nothing_writes_nothing(run_cli, sample_engine, tmp_path):
    result = run_cli("preview", "--week", "2025-W10", "--regions", "RU")
    assert result.code == 1
    assert result.err.startswith("error: no stories for RU in 2025-W10")
    assert not (tmp_path / "var").exists()
