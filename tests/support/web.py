"""The web app in-process, as a remote or a loopback client sees it."""

from __future__ import annotations

from pydantic import SecretStr

from worker.web import create_app

REMOTE = {"REMOTE_ADDR": "203.0.113.5"}
LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}


def web_client(engine, settings, token: str | None = None):
    """A test client of the app; with `token`, NEWSLETTER_OPERATOR_TOKEN set to it."""
    if token is not None:
        settings = settings.model_copy(update={"operator_token": SecretStr(token)})
    app = create_app(settings, engine)
    app.testing = True
    return app.test_client()
