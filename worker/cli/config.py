"""`newsletter config`: the settings in effect and where each came from, secrets masked.

By default what every operator decides, grouped by topic, and any other setting that is
set (an opt-in feature turned on, a tuning knob changed); `--all` adds the rest.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import click
from pydantic import SecretStr

from worker.cli.app import cli, warn_unknown_env
from worker.redact import mask_url
from worker.render.links import one_click_warning
from worker.settings import (
    DEFAULT_CONFIG,
    DEFAULT_SOURCE,
    ENV_PREFIX,
    SECRETS,
    Kind,
    Settings,
    env_name,
    kind_of,
    load_settings_with_sources,
    topic_fields,
)
from worker.store.db import describe_database, sqlite_path

MASK = "********"
_HIDDEN = {Kind.FEATURE: "opt-in features that are off", Kind.TUNING: "tuning knobs at their defaults"}


@cli.command()
@click.option("--all", "show_all", is_flag=True,
              help="Every setting: the opt-in features that are off and the tuning knobs too.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (every setting).")
def config(show_all: bool, as_json: bool) -> None:
    """Show the settings in effect and where each came from (secrets masked).

    By default what every operator decides, and every other setting that is set (an opt-in
    feature turned on, a tuning knob changed); --all lists the rest too. Touches no database
    and no broker: safe to run anywhere.
    """
    settings, sources = load_settings_with_sources()
    warn_unknown_env()
    rows = [{"setting": field, "env": env_name(field), "value": _shown(field, getattr(settings, field)),
             "source": sources[field]} for field in Settings.model_fields]
    file = _config_file()
    database = _database(settings)
    warnings = [w for w in (one_click_warning(settings),) if w]
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps({"config_file": file, "database": database, "settings": rows, "warnings": warnings},
                              indent=2, ensure_ascii=False))
        return
    click.echo(f"config file: {file['path']} ({file['status']})")
    click.echo(f"database: {database['description']}"
               + (f" ({'exists' if database['exists'] else 'not created yet: run `newsletter db upgrade`'})"
                  if database["path"] else ""))
    click.echo(f"working directory: {Path.cwd()} (relative paths below are relative to it)")
    _echo_settings(rows, show_all=show_all)


def _echo_settings(rows: list[dict], *, show_all: bool) -> None:
    """One line a setting, under its topic's heading; then what was left out, and where it is."""
    by_field = {row["setting"]: row for row in rows}
    shown = {field for field, row in by_field.items() if show_all or _is_shown(field, row["source"])}
    width = max(len(by_field[field]["env"]) for field in shown)
    for title, fields in topic_fields():
        if not shown.intersection(fields):
            continue
        click.echo(f"\n# {title}")
        for row in (by_field[field] for field in fields if field in shown):
            source = "env" if row["source"] == row["env"] else row["source"]
            click.echo(f"{row['env']:<{width}}  {_text(row['value'])}  [{source}]")
    hidden = Counter(kind_of(field) for field in by_field if field not in shown)
    if hidden:
        counts = ", ".join(f"{hidden[kind]} {what}" for kind, what in _HIDDEN.items() if hidden[kind])
        click.echo(f"\nnot shown: {counts} (docs/operations.md): `newsletter config --all` lists them")


def _is_shown(field: str, source: str) -> bool:
    """What every operator decides, and whatever was set: a feature turned on, a knob turned."""
    return kind_of(field) is Kind.OPERATOR or source != DEFAULT_SOURCE


def _config_file() -> dict:
    explicit = os.environ.get(ENV_PREFIX + "CONFIG")
    path = Path(explicit) if explicit else DEFAULT_CONFIG
    if explicit:
        status = "from NEWSLETTER_CONFIG"
    elif path.exists():
        status = "found in the working directory"
    else:
        status = "not found: defaults and environment only"
    return {"path": str(path.absolute()), "read": bool(explicit) or path.exists(), "status": status}


def _database(settings: Settings) -> dict:
    path = sqlite_path(settings.database_url)
    return {"description": describe_database(settings.database_url),
            "path": str(path) if path else None, "exists": path.exists() if path else None}


def _shown(field: str, value):
    """JSON-ready, with nothing secret in it: secrets say only whether they are set, and the
    credentials inside a URL (the database's, the broker's, a feed's) are replaced."""
    if field in SECRETS or isinstance(value, SecretStr):
        secret = value.get_secret_value() if isinstance(value, SecretStr) else value
        return f"{MASK} (set)" if secret else "(not set)"
    if value is None:
        return "(auto)"
    if isinstance(value, str) and "://" in value:  # the database's, the broker's, or any other URL
        return mask_url(value)
    if field == "sources":
        return [{**entry, "url": mask_url(entry["url"])} for entry in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _text(value) -> str:
    """A value as it would be written in the environment."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return '""' if value == "" else str(value)
