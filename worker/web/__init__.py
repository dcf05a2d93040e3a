"""Web: readers' pages (sign-up, confirm, manage, leave, one-click unsubscribe, view online) and the operator's."""

from worker.web.app import create_app, create_app_from_env

__all__ = ["create_app", "create_app_from_env"]
