"""`newsletter config`: what every operator decides and whatever is set, by topic; `--all` the rest."""

import json
import re

import pytest

from worker.settings import Kind, Settings, env_name, kind_of, topic_fields

# Settings only: one database is enough.
pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def _settings_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("NEWSLETTER_")]


def _sections(out: str) -> dict[str, list[str]]:
    """Each `# heading` and the variables listed under it."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("# "):
            current = sections.setdefault(line[2:], [])
        elif line.startswith("NEWSLETTER_"):
            assert current is not None, line
            current.append(line.split()[0])
    return sections


def _topic_of(field: str) -> str:
    [title] = [title for title, fields in topic_fields() if field in fields]
    return title


def test_by_default_it_shows_what_every_operator_decides_in_at_most_30_lines(run_cli):
    result = run_cli("config")
    assert result.code == 0, result.err
    lines = _settings_lines(result.out)
    assert len(lines) <= 30
    decided = [f for f in Settings.model_fields if kind_of(f) is Kind.OPERATOR]
    assert [line.split()[0] for line in lines] == [env_name(f) for f in decided]
    for field in decided:
        assert env_name(field) in _sections(result.out)[_topic_of(field)]
    features = sum(kind_of(f) is Kind.FEATURE for f in Settings.model_fields)
    tuning = sum(kind_of(f) is Kind.TUNING for f in Settings.model_fields)
    assert result.out.splitlines()[-1] == (
        f"not shown: {features} opt-in features that are off, {tuning} tuning knobs at their defaults "
        "(docs/operations.md): `newsletter config --all` lists them")


def test_an_opt_in_feature_that_is_on_is_shown_under_its_topic(run_cli):
    result = run_cli("config", env={"NEWSLETTER_REVIEW": "true", "NEWSLETTER_SITE_URL": "https://news.example"})
    sections = _sections(result.out)
    assert "NEWSLETTER_REVIEW" in sections["Schedule and review"]
    assert "NEWSLETTER_SITE_URL" in sections["The newsletter and its links"]
    lines = {line.split()[0]: line for line in _settings_lines(result.out)}
    assert lines["NEWSLETTER_REVIEW"].split(None, 1)[1] == "true  [env]"
    # Features still off stay out of the way.
    assert "NEWSLETTER_REGION_URL" not in lines and "NEWSLETTER_DKIM_SELECTOR" not in lines


def test_a_tuning_knob_someone_set_is_shown_too(run_cli, tmp_path):
    config = tmp_path / "newsletter.toml"
    config.write_text("liveness_seconds = 20\n")
    result = run_cli("config", env={"NEWSLETTER_BATCH_SIZE": "50", "NEWSLETTER_CONFIG": str(config)})
    lines = {line.split()[0]: line for line in _settings_lines(result.out)}
    assert lines["NEWSLETTER_BATCH_SIZE"].split(None, 1)[1] == "50  [env]"
    assert lines["NEWSLETTER_LIVENESS_SECONDS"].split(None, 1)[1] == f"20  [file {config}]"
    assert {"NEWSLETTER_BATCH_SIZE", "NEWSLETTER_LIVENESS_SECONDS"} <= set(_sections(result.out)["Delivery mechanics"])
    assert "NEWSLETTER_REDISPATCH_SECONDS" not in lines
    assert re.search(r"not shown: \d+ opt-in features that are off, \d+ tuning knobs", result.out)


def test_all_shows_every_setting_once_under_its_topic(run_cli):
    result = run_cli("config", "--all", env={"NEWSLETTER_BOUNCE_MAILBOX": "imaps://desk:hunter2@imap.example/INBOX"})
    assert result.code == 0, result.err
    sections = _sections(result.out)
    assert list(sections) == [title for title, _ in topic_fields()]
    for title, fields in topic_fields():
        assert sections[title] == [env_name(f) for f in fields]
    assert sorted(line.split()[0] for line in _settings_lines(result.out)) == sorted(
        env_name(f) for f in Settings.model_fields)
    assert "not shown" not in result.out
    # A secret among the features is masked like every other.
    lines = {line.split()[0]: line for line in _settings_lines(result.out)}
    assert lines["NEWSLETTER_BOUNCE_MAILBOX"].split(None, 1)[1] == "******** (set)  [env]"
    assert "hunter2" not in result.out + result.err


@pytest.mark.parametrize("args", [("config",), ("config", "--all")])
def test_a_misspelt_setting_stops_config_with_or_without_all(run_cli, args):
    result = run_cli(*args, env={"NEWSLETTER_BATCH_SIZ": "50"})
    assert (result.code, result.out) == (2, "")
    assert result.err == "error: NEWSLETTER_BATCH_SIZ is not a setting: did you mean NEWSLETTER_BATCH_SIZE?\n"


def test_json_lists_every_setting_whatever_the_kind(run_cli):
    data = json.loads(run_cli("config", "--json").out)
    assert [row["setting"] for row in data["settings"]] == list(Settings.model_fields)
