"""The README's quickstart is what CI runs."""

import re

from tests.conftest import REPO


def _quickstart():
    text = (REPO / "README.md").read_text()
    block = re.search(r"## Quickstart.*?```sh\n(.*?)```", text, re.S)
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quickstart_is_exactly_two_commands_and_ci_runs_them():
    commands = _quickstart()
    assert len(commands) == 2
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci
