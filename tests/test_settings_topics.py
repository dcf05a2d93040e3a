"""Settings a person can read: each in one topic, each of one kind, documented where its kind says."""

import re
import tomllib

from tests.conftest import REPO
from worker.settings import TOPICS, Kind, Settings, env_name, kind_of, topic_fields


def _of_kind(*kinds: Kind) -> set[str]:
    return {env_name(f) for f in Settings.model_fields if kind_of(f) in kinds}


def _documented(text: str) -> set[str]:
    """Variables named in the first cell of a table's rows; `NEWSLETTER_SMTP_HOST` / `_PORT`
    names NEWSLETTER_SMTP_PORT too (the suffix replaces the longest tail that makes a setting)."""
    settings = {env_name(f) for f in Settings.model_fields}
    names = set()
    for cell in re.findall(r"^\| ([^|]+) \|", text, re.M):
        found = re.findall(r"`(NEWSLETTER_[A-Z_]+|_[A-Z_]+)`", cell)
        first = found[0] if found else ""
        for name in found:
            if name.startswith("_"):
                stems = [first[:i] for i in range(len(first), 0, -1) if first[i - 1] == "_"]
                name = next((stem + name[1:] for stem in stems if stem + name[1:] in settings), name)
            names.add(name)
    return names


def test_every_setting_is_in_exactly_one_topic_and_has_a_kind():
    listed = [field for _, fields in topic_fields() for field in fields]
    assert listed == list(Settings.model_fields)  # each once, and in the order config shows them
    assert set(Settings.__bases__) == set(TOPICS)
    for field in Settings.model_fields:
        assert isinstance(kind_of(field), Kind), field


def test_what_every_operator_decides_fits_on_one_screen():
    decided = _of_kind(Kind.OPERATOR)
    assert 15 <= len(decided) <= 25


def test_the_readme_documents_the_decisions_and_the_features_and_no_tuning_knob():
    readme = (REPO / "README.md").read_text()
    section = re.search(r"\n## Settings\n(.*?)\n## ", readme, re.S).group(1)
    assert _documented(section) == _of_kind(Kind.OPERATOR, Kind.FEATURE)
    assert "docs/operations.md#tuning-knobs" in section


def test_operations_documents_every_tuning_knob():
    text = (REPO / "docs" / "operations.md").read_text()
    section = re.search(r"\n## Tuning knobs\n(.*?)(\n## |\Z)", text, re.S).group(1)
    assert _documented(section) == _of_kind(Kind.TUNING)


def test_the_example_config_file_sets_only_what_every_operator_decides():
    data = tomllib.loads((REPO / "config" / "newsletter.toml").read_text())
    keys = {"from_address" if key == "from" else key for key in data}
    assert keys and all(kind_of(key) is Kind.OPERATOR for key in keys)
