"""The import graph keeps its layers: a lower layer never imports a higher one, the web app
never imports Celery, and the worker's main process does not load the delivery path.

Every module under worker/ is parsed (never imported) and every import statement counted,
at module top or inside a function alike: an import inside a function is still a
dependency, only a later one."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "worker"

# Lowest first. A module may import its own layer and those below it. The first part of
# a module's name under worker/ says its place (worker.delivery.pipeline is `delivery`).
LAYERS = [
    # Leaf utilities: settings and the small pure helpers every layer uses.
    ("utility", {"errors", "text", "redact", "regions", "zones", "tokens", "clock", "settings", "origins", "i18n"}),
    # Tables, sessions, migrations.
    ("store", {"store"}),
    # What the newsletter does, each package on its own data; they may use one another.
    ("domain", {"operators", "ingest", "readers", "digest", "render", "delivery", "bounces", "preview", "metrics", "health",
                "readiness", "clicks"}),
    # The Celery app and the publisher (tasks by name): what the door hands editions out with.
    ("broker", {"celery_app"}),
    # The one door for the operator's actions on an edition, and the console's read models
    # (what the operator pages show, read through the door and the domain).
    ("editions", {"editions", "console"}),
    # What people and processes start: the command line, the web app, the task shells.
    ("entry", {"cli", "web", "tasks"}),
]
LAYER_OF = {part: index for index, (_, parts) in enumerate(LAYERS) for part in parts}

# Imports that break the layering on purpose, each with its reason; (importer, imported
# module or a prefix of it). Every entry must still be needed (a test below checks).
ALLOWED = {
    # A data migration recomputes every reader's address key with the reader's own rules
    # (check_address), so the keys it stores are the ones sign-up computes; a copy of the
    # rules would drift. Imported inside the functions that run the migration: alembic
    # imports every revision to find the head, and must not load the reader code for that.
    ("worker.store.migrations.versions.0015_readers_identity", "worker.readers.subscribers"),
}

CELERY_MODULES = ("celery", "kombu", "billiard", "worker.celery_app", "worker.tasks")


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every import statement in the file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from worker import metrics` imports the module worker.metrics;
                # `from worker.store.db import session_scope` imports worker.store.db.
                full = f"{base}.{alias.name}"
                out.append((full if full in MODULES else base, node.lineno))
    return out


def _layer_part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "worker" and len(parts) > 1 else None


def _allowed(importer: str, imported: str) -> bool:
    return any(importer == who and (imported == what or imported.startswith(what + "."))
               for who, what in ALLOWED)


def test_every_module_has_a_layer():
    """A new top-level module or package is placed in LAYERS, deliberately."""
    unplaced = sorted({part for name in MODULES if (part := _layer_part(name)) and part not in LAYER_OF})
    assert unplaced == [], f"place these in LAYERS (tests/test_layers.py): {unplaced}"


def test_no_layer_imports_a_higher_one():
    wrong = []
    for name, path in MODULES.items():
        own = _layer_part(name)
        if own is None:
            continue  # worker/__init__.py: names the root, hands Celery its app lazily
        for imported, line in _imports(name, path):
            other = _layer_part(imported)
            if other is None or other not in LAYER_OF or _allowed(name, imported):
                continue
            if LAYER_OF[other] > LAYER_OF[own]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} ({LAYERS[LAYER_OF[own]][0]}) imports "
                             f"{imported} ({LAYERS[LAYER_OF[other]][0]})")
    assert wrong == [], "a lower layer imports a higher one:\n" + "\n".join(wrong)


def test_every_allowed_exception_is_still_needed():
    used = {(name, what) for name, path in MODULES.items() for imported, _ in _imports(name, path)
            for who, what in ALLOWED if name == who and (imported == what or imported.startswith(what + "."))}
    assert used == ALLOWED


def test_the_web_app_imports_no_celery_module():
    """Handing an edition to the broker is worker/editions/'s; the web app only asks it."""
    wrong = [f"{path.relative_to(ROOT)}:{line}: {imported}"
             for name, path in MODULES.items() if name.startswith("worker.web")
             for imported, line in _imports(name, path)
             if any(imported == m or imported.startswith(m + ".") for m in CELERY_MODULES)]
    assert wrong == []


def test_the_door_neither_prints_nor_renders():
    """worker/editions/ returns values; the CLI and the web app put them into words."""
    door = {name: path for name, path in MODULES.items() if _layer_part(name) == "editions"}
    assert "worker.editions" in door
    for name, path in door.items():
        imported = {m.split(".")[0] for m, _ in _imports(name, path)}
        assert not imported & {"click", "rich", "flask"}, name
        calls = [n.lineno for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "print"]
        assert calls == [], name


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    return set(out.split())


# What the worker's main process must not load: it only consumes and hands tasks to the
# pool. Rendering, SMTP, the ledger, feeds and bounce parsing are imported where they run,
# in the pool processes (worker/tasks.py); alembic only when migrating.
NOT_IN_THE_MAIN_PROCESS = ("jinja2", "premailer", "css_inline", "lxml", "flufl", "feedparser", "httpx", "alembic",
                           "dkim", "worker.delivery", "worker.render", "worker.ingest", "worker.editions",
                           "worker.bounces.mailboxes", "worker.bounces.reports")


@pytest.mark.parametrize("statement", ["import worker.tasks", "import worker.celery_app"])
def test_the_task_module_loads_no_delivery_path(statement):
    loaded = _loaded_after(statement)
    found = sorted(m for m in loaded if any(m == p or m.startswith(p + ".") for p in NOT_IN_THE_MAIN_PROCESS))
    assert found == []


def test_the_web_app_loads_no_celery_module():
    loaded = _loaded_after("import worker.web.app")
    assert sorted(m for m in loaded if any(m == p or m.startswith(p + ".") for p in CELERY_MODULES)) == []


def test_the_schema_check_reads_the_head_revision_without_importing_the_migrations():
    assert not {"alembic", "worker.ingest"} & _loaded_after(
        "from worker.store.db import head_revision; head_revision()")


NOW_ELSEWHERE: set[str] = set()


def test_now_is_spelt_once():
    """worker/clock.py's utcnow() is "now"; nothing else asks the system clock for a datetime."""
    wrong = []
    for name, path in MODULES.items():
        if name == "worker.clock" or name in NOW_ELSEWHERE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("now", "utcnow") \
                    and isinstance(node.value, ast.Name) and node.value.id == "datetime":
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
            if isinstance(node, ast.FunctionDef) and node.name == "utcnow":
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: def utcnow")
    assert wrong == []


def test_the_web_app_sends_mail_through_the_delivery_packages_door():
    """A confirmation mail goes through worker/delivery/mail.py, never a sender implementation."""
    wrong = [f"{path.relative_to(ROOT)}:{line}: {imported}"
             for name, path in MODULES.items() if name.startswith("worker.web")
             for imported, line in _imports(name, path)
             if imported in ("worker.delivery.senders", "worker.delivery.smtp", "smtplib")]
    assert wrong == []
