"""Web: preview pages, one-click unsubscribe, the view-online archive."""

from worker.web.app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]
