"""Weekly regional digest worker.

`celery -A worker worker` finds the Celery app through the module-level
`__getattr__` below, so importing this package builds nothing by itself.
"""

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def __getattr__(name: str):
    # Celery's `-A worker` looks for `worker.app` / `worker.celery`; build it lazily.
    if name in ("app", "celery"):
        from worker.celery_app import get_app

        return get_app()
    raise AttributeError(name)
