"""Reading settings: defaults, then the TOML file, then the environment, and where each value came from."""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from worker.errors import ConfigError
from worker.settings.model import Settings

ENV_PREFIX = "NEWSLETTER_"
DEFAULT_CONFIG = Path("config/newsletter.toml")
SECRETS = frozenset({"smtp_password", "secret_key", "operator_token", "bounce_mailbox"})
# Variables with the prefix that are not settings (the config path itself, the CLI's
# --debug, the test suite's and the benchmarks' own knobs).
_NOT_SETTINGS = frozenset({"config", "debug"})
_NOT_SETTINGS_PREFIXES = ("test_", "bench_")
DEFAULT_SOURCE = "default"


def env_name(field: str) -> str:
    """The environment variable of a Settings field."""
    return ENV_PREFIX + ("FROM" if field == "from_address" else field.upper())


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read settings; raise ConfigError naming the first bad setting."""
    return load_settings_with_sources(env)[0]


def load_settings_with_sources(env: Mapping[str, str] | None = None) -> tuple[Settings, dict[str, str]]:
    """Settings, and where each field's value came from: "default", "file PATH" or the
    environment variable's name (what `newsletter config` shows)."""
    env = os.environ if env is None else env
    # A near miss would leave the setting it meant at its default (a new SQLite database
    # instead of the PostgreSQL one): refused, where a name like no setting is only warned of.
    misspelt = [f"{name} is not a setting: did you mean {close}?" for name, close in unknown_env_vars(env) if close]
    if misspelt:
        raise ConfigError("; ".join(misspelt))
    values, origin, path = _gather(env)
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = str(err["loc"][0]) if err["loc"] else "?"
        where = origin.get(loc, loc)
        if err["type"] == "extra_forbidden":
            raise ConfigError(f"unknown setting {loc!r} in {path}") from None
        msg = err["msg"].removeprefix("Value error, ")
        # Never echo a secret back, not even a malformed one.
        shown = "" if loc in SECRETS else f" (got {err.get('input')!r})"
        raise ConfigError(f"setting {_where_name(where)}: {msg}{shown}") from None
    sources = {}
    for field in Settings.model_fields:
        where = origin.get(_key(field))
        sources[field] = (DEFAULT_SOURCE if where is None else where if where.startswith(ENV_PREFIX)
                          else f"file {path.absolute()}")
    return settings, sources


def unknown_env_vars(env: Mapping[str, str] | None = None) -> list[tuple[str, str | None]]:
    """`NEWSLETTER_*` variables that name no setting (a typo is otherwise silently ignored),
    each with the closest real name, if one is close."""
    env = os.environ if env is None else env
    fields = {_key(n) for n in Settings.model_fields}
    unknown = []
    for name in sorted(env):
        key = _env_key(name)
        if key is None or key in fields:
            continue
        # Compared without the prefix, which every name shares and would make all look alike.
        close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.75)
        unknown.append((name, ENV_PREFIX + close[0].upper() if close else None))
    return unknown


def _key(field: str) -> str:
    """The field's name in the file and, upper-cased after the prefix, in the environment."""
    return "from" if field == "from_address" else field


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for key in data:
        if key in SECRETS:
            raise ConfigError(
                f"setting {key} is a secret: set {env_name(key)} in the environment, "
                f"not in {path}"
            )
    return data


def _gather(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str], Path]:
    explicit = env.get(ENV_PREFIX + "CONFIG")
    path = Path(explicit) if explicit else DEFAULT_CONFIG
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if explicit or path.exists():
        for key, value in _read_config(path).items():
            values[key] = value
            origin[key] = f"{key} in {path}"
    fields = {_key(n) for n in Settings.model_fields}
    for name, value in env.items():
        key = _env_key(name)
        if key is None or key not in fields:
            continue  # not ours, or a variable that shares the prefix (see unknown_env_vars)
        values[key] = value
        origin[key] = name
    return values, origin, path


def _env_key(name: str) -> str | None:
    """`NEWSLETTER_SMTP_PORT` -> `smtp_port`; None for other variables and our non-settings."""
    if not name.startswith(ENV_PREFIX):
        return None
    key = name[len(ENV_PREFIX):].lower()
    if key in _NOT_SETTINGS or key.startswith(_NOT_SETTINGS_PREFIXES):
        return None
    return key


def _where_name(where: str) -> str:
    return where if where.startswith(ENV_PREFIX) or " in " in where else env_name(where)
