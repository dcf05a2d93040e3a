"""docker-compose.yml: parses, and every command it runs exists in the package."""

import shlex

import click
import yaml

from tests.conftest import REPO
from worker.cli import cli


def _compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _resolve_newsletter(args):
    command = cli
    for word in args:
        if word.startswith("-"):
            break
        assert isinstance(command, click.Group), f"{word!r} follows a command that takes no subcommands"
        sub = command.get_command(click.Context(command), word)
        assert sub is not None, f"newsletter has no command {word!r}"
        command = sub
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for word in args:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"{word} is not an option of {command.name}"
    return command


def test_services_and_commands_exist():
    compose = _compose()
    services = compose["services"]
    assert {"redis", "postgres", "mailpit", "worker", "beat"} <= set(services)
    checked = 0
    for name, service in services.items():
        command = service.get("command")
        if command is None:
            continue
        args = command if isinstance(command, list) else shlex.split(command)
        if args[0] == "newsletter":
            _resolve_newsletter(args[1:])
        elif args[0] == "celery":
            assert args[1:3] == ["-A", "worker"], name
            import worker

            app = worker.app
            assert app.main == "worker"
            assert args[3] in ("worker", "beat"), name
            if "-Q" in args:
                queues = set(args[args.index("-Q") + 1].split(","))
                routed = {route["queue"] for route in app.conf.task_routes.values()}
                assert routed | {app.conf.task_default_queue} <= queues
        else:
            raise AssertionError(f"{name} runs {args[0]!r}, which the package does not provide")
        checked += 1
    assert checked >= 4


def test_app_services_share_the_environment_and_wait_for_their_dependencies():
    services = _compose()["services"]
    env = services["worker"]["environment"]
    assert env["NEWSLETTER_EMAIL_BACKEND"] == "smtp" and env["NEWSLETTER_SMTP_HOST"] == "mailpit"
    assert services["beat"]["environment"] == env
    assert services["worker"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    from worker.settings import load_settings

    values = {k: v for k, v in env.items() if not str(v).startswith("${")}
    load_settings({k: str(v) for k, v in values.items()})  # every value is a valid setting


def test_dockerfile_installs_the_package_and_runs_the_worker():
    text = (REPO / "Dockerfile").read_text()
    assert "pip install" in text and "COPY worker/ worker/" in text and "COPY templates/ templates/" in text
    assert 'CMD ["celery", "-A", "worker", "worker"' in text
