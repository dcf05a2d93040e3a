"""Typed settings: defaults, then a TOML file, then `NEWSLETTER_*` environment.

Nothing is read at import time; call `load_settings()`. Secrets (the SMTP
password and the signing key) come only from the environment and are kept as
`SecretStr`, so they never show up in a repr, a log line or an error.

Where to read what:

- `topics.py`: every setting, grouped by topic (one class each), each marked with its
  kind: what every operator decides, an opt-in feature, or a tuning knob;
- `model.py`: `Settings`, all topics as one flat model (`settings.smtp_host`), and what
  is derived from them;
- `load.py`: the file and the environment, where each value came from, misspellings;
- `values.py`: checks of single values (addresses, colours, host names).
"""

from worker.settings.load import (
    DEFAULT_CONFIG,
    DEFAULT_SOURCE,
    ENV_PREFIX,
    SECRETS,
    env_name,
    load_settings,
    load_settings_with_sources,
    unknown_env_vars,
)
from worker.settings.model import TOPICS, Settings, kind_of, topic_fields
from worker.settings.topics import Kind
from worker.settings.values import MIN_CONTRAST, contrast_ratio, is_ehlo_name, parse_address

__all__ = ["DEFAULT_CONFIG", "DEFAULT_SOURCE", "ENV_PREFIX", "MIN_CONTRAST", "SECRETS", "TOPICS", "Kind", "Settings",
           "contrast_ratio", "env_name", "is_ehlo_name", "kind_of", "load_settings", "load_settings_with_sources",
           "parse_address", "topic_fields", "unknown_env_vars"]
