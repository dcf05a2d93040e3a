"""The code's shape, held: functions short enough to read in one screen, and every web
route in a blueprint (worker/web/app.py assembles them; the route-map test in
test_web_auth.py holds who may reach each)."""

from __future__ import annotations

import ast
from pathlib import Path

import sqlalchemy as sa

from worker.settings import Settings
from worker.web import create_app

WORKER = Path(__file__).resolve().parent.parent / "worker"
# A function longer than this is read in pieces; split it (STYLE.md: no registration closures).
MAX_FUNCTION_LINES = 80


def test_no_function_under_worker_is_over_80_lines():
    long = []
    for path in sorted(WORKER.rglob("*.py")):
        if "migrations" in path.relative_to(WORKER).parts:
            continue  # generated revisions, each one upgrade and one downgrade
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(WORKER.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "\n".join(long)


def test_every_web_route_belongs_to_a_blueprint():
    app = create_app(Settings(), sa.create_engine("sqlite://"))
    endpoints = {rule.rule: rule.endpoint for rule in app.url_map.iter_rules() if rule.endpoint != "static"}
    assert endpoints and not {rule: e for rule, e in endpoints.items() if "." not in e}
    assert {e.split(".")[0] for e in endpoints.values()} == {"public", "archive", "clicks", "signup", "manage",
                                                              "events", "console", "operator", "console_audit",
                                                              "console_editions", "console_readers"}
