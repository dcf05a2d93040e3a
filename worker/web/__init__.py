"""Web: preview pages, one-click unsubscribe, the view-online archive."""

from worker.web.app import create_app

__all__ = ["create_app"]
