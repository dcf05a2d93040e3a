"""Weekly regional digest worker.

`celery -A worker worker` finds the Celery app through the module-level
`__getattr__` below, so importing this package builds nothing by itself; the same
goes for `worker.__version__` (the installed distribution's version).
"""

import sys
from pathlib import Path

from worker.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent


DISTRIBUTION = "newsletter-worker"


def __getattr__(name: str):
    # Celery's `-A worker` looks for `worker.app` / `worker.celery`; build it lazily.
    if name in ("app", "celery"):
        from worker.celery_app import get_app

        try:
            return get_app()
        except ConfigError as exc:
            # A bad or misspelt setting: one line and exit 2, as the CLI says it, not
            # Celery's "Unable to load celery application" and a traceback.
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(DISTRIBUTION)
        except PackageNotFoundError:  # run from a checkout that was never installed
            return "0+unknown"
    raise AttributeError(name)
