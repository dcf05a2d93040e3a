"""docker-compose.yml and the Dockerfile, read without Docker.

The YAML is parsed with PyYAML and checked against the package (every command it runs
or suggests exists). Where this machine allows, each container's conditions are
simulated: the app's commands run as the image's unprivileged user in a copy of the
image's /app where only var/ is writable; Redis runs with the compose arguments;
the PostgreSQL healthcheck runs against a server that, like the image's init-time
server, listens on its Unix socket only.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import click
import pytest
import yaml

from tests.conftest import REPO
from worker.cli import cli

APP_UID = 10001
IMAGE_ROOT = "/app"


def _compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def _args(command) -> list[str]:
    return command if isinstance(command, list) else shlex.split(command)


def _resolve_newsletter(args):
    command = cli
    for word in args:
        if word.startswith("-"):
            break
        if not isinstance(command, click.Group):
            break  # the rest are arguments
        sub = command.get_command(click.Context(command), word)
        assert sub is not None, f"newsletter has no command {word!r}"
        command = sub
    options = {opt for param in command.params for opt in getattr(param, "opts", [])}
    for word in args:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"{word} is not an option of {command.name}"
    return command


def _check_app_command(args: list[str], where: str) -> None:
    if args[0] == "newsletter":
        _resolve_newsletter(args[1:])
    elif args[0] == "celery":
        import worker

        assert args[1:3] == ["-A", "worker"], where
        assert worker.app.main == "worker"
        assert args[3] in ("worker", "beat"), where
    else:
        raise AssertionError(f"{where} runs {args[0]!r}, which the package does not provide")


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def _dockerfile_copies() -> list[str]:
    """The sources of the Dockerfile's COPY lines, as paths relative to the repository."""
    sources = []
    for line in _dockerfile().splitlines():
        if line.startswith("COPY "):
            sources += line.split()[1:-1]
    return sources


def _in_image(path: str) -> bool:
    return any(path == src.rstrip("/") or path.startswith(src if src.endswith("/") else src + "/")
               for src in _dockerfile_copies())


# --- the file as written -----------------------------------------------------------------------


def test_services_and_commands_exist():
    services = _compose()["services"]
    assert {"redis", "postgres", "mailpit", "migrate", "worker", "beat", "web"} <= set(services)
    checked = 0
    for name, service in services.items():
        if "command" in service and "build" in service:
            _check_app_command(_args(service["command"]), name)
            checked += 1
    assert checked == 4


def test_the_worker_is_the_plain_command_and_consumes_both_queues():
    services = _compose()["services"]
    plain = ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
    assert services["worker"]["command"] == plain
    assert 'CMD ["' + '", "'.join(plain) + '"]' in _dockerfile()
    # With no -Q a worker consumes the app's declared queues: every routed one must be there.
    from worker.celery_app import create_app
    from worker.settings import Settings

    app = create_app(Settings())
    routed = {route["queue"] for route in app.conf.task_routes.values()} | {app.conf.task_default_queue}
    assert routed <= set(app.amqp.queues), f"a plain worker would not consume {routed - set(app.amqp.queues)}"


def test_header_commands_are_real():
    """Each `docker compose ...` (and `export`) line in the header comment works as written."""
    text = (REPO / "docker-compose.yml").read_text()
    compose = _compose()
    services = compose["services"]
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#").strip())
    commands = [line.split("  #")[0].strip() for line in header if line.startswith(("docker compose", "export "))]
    assert any(c.startswith("docker compose up") for c in commands)
    assert "docker compose run --rm worker newsletter demo" in commands
    interpolated = set(re.findall(r"\$\{(\w+)", text))
    for command in commands:
        words = shlex.split(command)
        if words[0] == "export":
            _check_export(command, interpolated)
            continue
        assert words[:2] == ["docker", "compose"], command
        sub, rest = words[2], words[3:]
        if sub == "up":
            assert set(rest) <= {"--build", "-d", "--detach"}, command
            continue
        assert sub == "run", command
        options = [w for w in rest if w.startswith("-")]
        assert options == ["--rm"] and rest[0] == "--rm", command
        service, args = rest[1], rest[2:]
        assert service in services and "build" in services[service], command
        _check_app_command(args, command)
        for word in args:
            if "/" in word and not word.startswith("-"):
                assert (REPO / word).exists() and _in_image(word), f"{command}: {word} is not in the image"
    # The URLs the header sends people to are published (on loopback).
    ports = [p for s in services.values() for p in s.get("ports", [])]
    for url_port in re.findall(r"http://localhost:(\d+)", "\n".join(header)):
        assert f"127.0.0.1:{url_port}:{url_port}" in ports
    # `.env` holds the secrets the header suggests: never part of the build context.
    assert ".env" in (REPO / ".dockerignore").read_text().split()


def _check_export(command: str, interpolated: set[str]) -> None:
    """Run by a real shell: every variable it sets is one compose reads, and the secret key it
    makes is one the worker takes (never a placeholder such as `change-me`)."""
    from worker.readiness import secret_key_problem
    from worker.settings import load_settings

    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    out = subprocess.run(["bash", "-ec", f"{command}\nenv -0"], env=clean, capture_output=True, check=True).stdout
    assigned = dict(item.split("=", 1) for item in out.decode().split("\0") if item.startswith("NEWSLETTER_"))
    assert assigned and set(assigned) <= interpolated, f"{command}: compose never reads {set(assigned)}"
    if "NEWSLETTER_SECRET_KEY" in assigned:
        key = assigned["NEWSLETTER_SECRET_KEY"]
        assert secret_key_problem(load_settings({"NEWSLETTER_SECRET_KEY": key, "NEWSLETTER_CONFIG": os.devnull})) \
            is None, command


def test_nothing_suggests_a_placeholder_secret():
    """Issue 21: `change-me` in the compose header was a key anyone could read."""
    from worker.readiness import PLACEHOLDER_KEYS

    for path in ("docker-compose.yml", "README.md", "config/example.env", "docs/operations.md"):
        text = (REPO / path).read_text()
        for name in ("NEWSLETTER_SECRET_KEY", "NEWSLETTER_OPERATOR_TOKEN", "NEWSLETTER_SMTP_PASSWORD"):
            for value in re.findall(rf"{name}[=:] *([^\s$'\"{{]+)", text):
                assert value.casefold() not in PLACEHOLDER_KEYS and not value.startswith("change"), (path, value)


def test_the_stack_says_mailpit_is_a_sink_and_its_worker_would_start():
    from worker.readiness import require_ready
    from worker.settings import load_settings

    env = _compose_env(NEWSLETTER_SECRET_KEY="Jq3vX9tLm2Rw8Zp5Kd1Ny7Hc4Bf6Gs0T", NEWSLETTER_CONFIG=os.devnull)
    assert env["NEWSLETTER_SMTP_SINK"] == "true"
    require_ready(load_settings(env))


def test_app_services_share_the_environment_and_wait_for_their_dependencies():
    services = _compose()["services"]
    env = services["worker"]["environment"]
    assert env["NEWSLETTER_EMAIL_BACKEND"] == "smtp" and env["NEWSLETTER_SMTP_HOST"] == "mailpit"
    assert env["NEWSLETTER_BROKER_URL"] == "redis://redis:6379/0"  # explicit, at the redis service
    assert "@postgres:5432/" in env["NEWSLETTER_DATABASE_URL"]
    assert any(p.endswith(":" + env["NEWSLETTER_SMTP_PORT"]) for p in services["mailpit"]["ports"])
    for name in ("migrate", "beat"):
        assert services[name]["environment"] == env, name
    assert services["web"]["environment"].items() >= env.items()

    migrate = services["migrate"]
    assert migrate["command"] == ["newsletter", "db", "upgrade"]
    assert migrate["restart"] == "no"  # once
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("worker", "beat", "web"):
        depends = services[name]["depends_on"]
        assert depends["migrate"] == {"condition": "service_completed_successfully"}, name
        for service in ("postgres", "redis", "mailpit"):
            assert depends[service] == {"condition": "service_healthy"}, name
            assert "healthcheck" in services[service], service
    from worker.settings import load_settings

    values = {k: v for k, v in env.items() if not str(v).startswith("${")}
    load_settings({k: str(v) for k, v in values.items()})  # every value is a valid setting


def test_images_are_pinned_to_a_minor_version():
    services = _compose()["services"]
    for name, service in services.items():
        if "build" in service:
            assert service["image"].endswith(":local"), name
            continue
        image, _, tag = service["image"].rpartition(":")
        assert image and re.fullmatch(r"v?\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?", tag), f"{name}: {service['image']}"
    assert services["redis"]["image"].startswith("redis:7.")
    assert re.fullmatch(r"postgres:16\.\d+-alpine", services["postgres"]["image"])
    assert re.fullmatch(r"axllent/mailpit:v1\.\d+(\.\d+)?", services["mailpit"]["image"])
    base = re.search(r"^FROM (\S+)", _dockerfile(), re.M).group(1)
    assert re.fullmatch(r"python:3\.\d+(\.\d+)?-slim-\w+", base), base


def test_every_port_is_on_loopback():
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"
    assert _compose()["services"]["web"]["command"][-2:] == ["--workers", "2"]  # gunicorn


def test_redis_is_a_durable_broker():
    compose = _compose()
    redis = compose["services"]["redis"]
    args = _args(redis["command"])
    assert args[0] == "redis-server"
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    volume, _, target = redis["volumes"][0].partition(":")
    assert target == "/data" and volume in compose["volumes"]
    assert "grep -q PONG" in redis["healthcheck"]["test"][1]


def test_postgres_healthcheck_is_over_tcp_as_the_configured_user():
    postgres = _compose()["services"]["postgres"]
    test = postgres["healthcheck"]["test"]
    assert test[0] == "CMD"
    args = test[1:]
    env = postgres["environment"]
    assert args[0] == "pg_isready"
    assert args[args.index("-h") + 1] == "127.0.0.1" and args[args.index("-p") + 1] == "5432"
    assert args[args.index("-U") + 1] == env["POSTGRES_USER"]
    assert args[args.index("-d") + 1] == env["POSTGRES_DB"]


def test_beat_keeps_its_schedule_in_the_writable_volume():
    compose = _compose()
    beat = compose["services"]["beat"]
    args = beat["command"]
    schedule = args[args.index("--schedule") + 1]
    assert schedule == f"{IMAGE_ROOT}/var/celerybeat-schedule"
    mounts = dict(reversed(v.split(":")[:2]) for v in beat["volumes"])
    assert mounts[f"{IMAGE_ROOT}/var"] in compose["volumes"]  # a named volume
    text = _dockerfile()
    assert f"WORKDIR {IMAGE_ROOT}" in text and "USER app" in text
    assert f"--uid {APP_UID}" in text
    assert re.search(rf"mkdir -p {IMAGE_ROOT}/var \\\s*&& chown -R app:app {IMAGE_ROOT}/var", text)


def test_the_worker_gets_time_to_finish_its_batch_on_stop():
    grace = _compose()["services"]["worker"]["stop_grace_period"]
    seconds = int(grace[:-1]) * {"s": 1, "m": 60}[grace[-1]]
    assert seconds >= 60


def test_dockerfile_installs_the_package():
    text = _dockerfile()
    assert "pip install" in text
    for path in ("worker/", "templates/", "config/", "examples/"):
        assert f"COPY {path} {path}" in text


# --- simulations -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    raise AssertionError(f"{what}: not within {timeout} s (exit {proc.poll() if proc else None})\n{tail}")


def _stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _hidden_ancestor(path: Path) -> Path | None:
    """The first directory above `path` that other users cannot enter."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not parent.stat().st_mode & stat.S_IXOTH:
            return parent
    return None


class ImageUser:
    """Runs commands as uid 10001 in a copy of the image's /app, only var/ writable.

    When this interpreter lives under a directory others cannot enter (a pyenv under
    /root), each command runs in a private mount namespace where that directory is a
    tmpfs holding only the interpreter: nothing on the host changes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.app = root / "app"
        self.logs: list[Path] = []
        self._prelude = ["set -e"]
        base = Path(sys.base_prefix).resolve()
        hidden = _hidden_ancestor(base)
        self._private_mounts = hidden is not None
        if hidden is not None:
            child = hidden / base.relative_to(hidden).parts[0]
            keep = root / "keep"
            keep.mkdir()
            self._prelude += [f"mount --bind {shlex.quote(str(child))} {keep}",
                              f"mount -t tmpfs -o mode=755 tmpfs {shlex.quote(str(hidden))}",
                              f"mkdir -p {shlex.quote(str(child))}",
                              f"mount --bind {keep} {shlex.quote(str(child))}"]
        self._prelude += [f"cd {self.app}",
                          f'exec setpriv --reuid {APP_UID} --regid {APP_UID} --clear-groups -- "$@"']

    def build(self) -> ImageUser:
        self.app.mkdir()
        for source in _dockerfile_copies():
            src = REPO / source
            if src.is_dir():
                shutil.copytree(src, self.app / source.rstrip("/"),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, self.app / src.name)
        var = self.app / "var"
        var.mkdir()
        os.chown(var, APP_UID, APP_UID)
        return self

    def argv(self, args: list[str]) -> list[str]:
        script = "\n".join(self._prelude)
        unshare = ["unshare", "--mount", "--propagation", "private", "--"] if self._private_mounts else []
        return [*unshare, "sh", "-c", script, "sh", *args]

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        venv_bin = str(Path(sys.executable).parent)
        return {"PATH": f"{venv_bin}:/usr/bin:/bin", "HOME": str(self.app), "LANG": "C.UTF-8", **extra}

    def start(self, args: list[str], env: dict[str, str], name: str) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            return subprocess.Popen(self.argv(args), env=self.env(env), stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def run(self, args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(args), env=self.env(env), capture_output=True, text=True, timeout=timeout)

    def files_outside_var(self) -> set[str]:
        return {str(p.relative_to(self.app)) for p in self.app.rglob("*")
                if p.relative_to(self.app).parts[0] != "var"}


@pytest.fixture
def image_user():
    if os.geteuid() != 0:
        pytest.skip("simulating the image's user needs root (setpriv, a private mount namespace)")
    for tool in ("setpriv", "unshare") if _hidden_ancestor(Path(sys.base_prefix).resolve()) else ("setpriv",):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    for path in (Path(sys.prefix), REPO):
        if _hidden_ancestor(path.resolve()) is not None:
            pytest.skip(f"{path} is not readable by other users")
    root = Path(tempfile.mkdtemp(prefix="image-app-", dir="/tmp"))
    root.chmod(0o755)
    try:
        user = ImageUser(root).build()
        probe = user.run(["python", "-c", "import celery, redis, gunicorn, psycopg, worker.cli"], {})
        if probe.returncode != 0:
            pytest.skip(f"cannot run this interpreter as uid {APP_UID}: {probe.stderr.strip()[-300:]}")
        yield user
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _compose_env(**overrides: str) -> dict[str, str]:
    env = {k: str(v) for k, v in _compose()["services"]["web"]["environment"].items()}
    env["NEWSLETTER_SECRET_KEY"] = "compose-secret-Yh6Rt2Mw9Qz4Ld8Nc3Vb"
    env["NEWSLETTER_OPERATOR_TOKEN"] = "operator-token"
    env.update(overrides)
    return env


def _in_sim(args: list[str], user: ImageUser) -> list[str]:
    return [a.replace(IMAGE_ROOT + "/", f"{user.app}/") if a.startswith(IMAGE_ROOT + "/") else a for a in args]


def _empty(url: str) -> None:
    from tests.conftest import _truncate
    from worker.store.db import create_db_engine

    engine = create_db_engine(url)
    try:
        _truncate(engine)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_app_services_run_as_the_image_user_writing_only_var(image_user, pg_url, redis_url, smtp_server):
    """migrate, the header's demo, then worker, beat and web: each compose command, as uid 10001 in /app."""
    services = _compose()["services"]
    env = _compose_env(NEWSLETTER_DATABASE_URL=pg_url, NEWSLETTER_BROKER_URL=redis_url,
                       NEWSLETTER_SMTP_HOST="127.0.0.1", NEWSLETTER_SMTP_PORT=str(smtp_server.port))
    before = image_user.files_outside_var()
    _empty(pg_url)  # the session's PostgreSQL database: other tests may have sent the demo week

    migrate = image_user.run(services["migrate"]["command"], env)
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    # `docker compose run --rm worker newsletter demo`: through the relay (Mailpit there).
    demo = image_user.run(["newsletter", "demo"], env)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert len(smtp_server.received) == 25
    assert "look in that relay's inbox (docker compose: Mailpit, http://localhost:8025)" in demo.stdout

    port = _free_port()
    web_args = list(services["web"]["command"])
    web_args[web_args.index("--host") + 1] = "127.0.0.1"
    web_args[web_args.index("--port") + 1] = str(port)
    procs = {
        "worker": image_user.start(services["worker"]["command"], env, "worker"),
        "beat": image_user.start(_in_sim(services["beat"]["command"], image_user), env, "beat"),
        "web": image_user.start(web_args, env, "web"),
    }
    logs = {name: image_user.root / f"{name}.log" for name in procs}
    try:
        _wait(lambda: " ready." in logs["worker"].read_text(errors="replace"), 60, "worker ready",
              procs["worker"], logs["worker"])
        schedule = image_user.app / "var"
        _wait(lambda: any(p.name.startswith("celerybeat-schedule") for p in schedule.iterdir()), 30,
              "beat's schedule file", procs["beat"], logs["beat"])

        def healthy():
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
            except OSError:
                return False

        _wait(healthy, 60, "web /healthz", procs["web"], logs["web"])
        # The worker's and beat's healthchecks, as the image user: the worker's processes beat
        # in the database; beat has published nothing yet (its first tick is a minute away).
        # A minute, as for web: a worker's pool processes beat once they have loaded the delivery
        # path, which a loaded 2-core machine took over 30 s to do (a clean-clone run, 2026-12-07).
        _wait(lambda: image_user.run(services["worker"]["healthcheck"]["test"][1:], env).returncode == 0, 60,
              "worker healthcheck", procs["worker"], logs["worker"])
        beat_check = image_user.run(_in_sim(services["beat"]["healthcheck"]["test"][1:], image_user), env)
        assert beat_check.returncode == 1, beat_check.stdout + beat_check.stderr
        assert "beat has handed no task to the broker yet" in beat_check.stderr
        time.sleep(2)  # past start-up: nothing crash-loops
        for name, proc in procs.items():
            assert proc.poll() is None, f"{name} exited {proc.returncode}:\n{logs[name].read_text()[-3000:]}"
    finally:
        for proc in procs.values():
            _stop(proc)
    worker_log = logs["worker"].read_text(errors="replace")
    # No -Q, and both queues consumed.
    queues = worker_log.split("[queues]", 1)[1].split("[tasks]", 1)[0]
    assert re.search(r"\.> celery\s", queues) and re.search(r"\.> send\s", queues), queues
    for name, log in logs.items():
        text = log.read_text(errors="replace")
        assert "Permission denied" not in text and "Read-only file system" not in text, f"{name}:\n{text[-3000:]}"
    assert image_user.files_outside_var() == before
    assert {p.name.split(".")[0] for p in (image_user.app / "var").iterdir()} == {"celerybeat-schedule", "preview"}


class _LoadingRedis:
    """Answers every command as Redis does while it replays its append-only file."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                if conn.recv(4096):
                    conn.sendall(b"-LOADING Redis is loading the dataset in memory\r\n")

    def close(self) -> None:
        self.sock.close()


def _redis_healthcheck(port: int) -> int:
    test = _compose()["services"]["redis"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    command = test[1].replace("redis-cli", f"redis-cli -p {port}")
    return subprocess.run(["sh", "-c", command], capture_output=True, timeout=10).returncode


@pytest.mark.slow
def test_redis_as_compose_runs_it_keeps_tasks_across_a_crash(tmp_path):
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server is not installed")
    import redis

    loading = _LoadingRedis()
    try:
        plain = subprocess.run(["redis-cli", "-p", str(loading.port), "ping"], capture_output=True, timeout=10)
        assert plain.returncode == 0  # why the healthcheck looks for PONG
        assert _redis_healthcheck(loading.port) != 0
    finally:
        loading.close()

    port = _free_port()
    args = [*_args(_compose()["services"]["redis"]["command"]), "--port", str(port), "--bind", "127.0.0.1",
            "--dir", str(tmp_path)]

    def start():
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(lambda: _redis_healthcheck(port) == 0, 20, "redis healthcheck", proc)
        return proc

    proc = start()
    try:
        client = redis.Redis(port=port)
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        client.lpush("send", "a batch")
        time.sleep(1.5)  # appendfsync everysec
        _stop(proc, signal.SIGKILL)  # no shutdown save: only the AOF has it
        proc = start()
        assert redis.Redis(port=port).lrange("send", 0, -1) == [b"a batch"]
    finally:
        _stop(proc)


@pytest.mark.slow
def test_postgres_healthcheck_waits_for_tcp_not_the_init_servers_socket():
    """The image's entrypoint runs init scripts on a temporary server with listen_addresses=''."""
    tools = {name: shutil.which(name) for name in ("initdb", "postgres", "pg_isready")}
    if os.geteuid() != 0 or None in tools.values():
        pytest.skip("needs root and the PostgreSQL server binaries")
    try:
        import pwd

        pg_user = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres system user")
    postgres = _compose()["services"]["postgres"]
    user = postgres["environment"]["POSTGRES_USER"]
    root = Path(tempfile.mkdtemp(prefix="pg-init-", dir="/tmp"))
    os.chown(root, pg_user.pw_uid, pg_user.pw_gid)
    port = _free_port()
    check = [tools["pg_isready"] if a == "pg_isready" else a for a in postgres["healthcheck"]["test"][1:]]
    check[check.index("-p") + 1] = str(port)
    as_pg = ["setpriv", f"--reuid={pg_user.pw_uid}", f"--regid={pg_user.pw_gid}", "--clear-groups", "--"]

    def healthcheck() -> int:
        return subprocess.run(check, capture_output=True, timeout=10).returncode

    def socket_check() -> int:  # the old test: `pg_isready -U ... -d ...`, Unix socket
        return subprocess.run([tools["pg_isready"], "-U", user, "-d", user], capture_output=True, timeout=10,
                              env={**os.environ, "PGHOST": str(root), "PGPORT": str(port)}).returncode

    def server(listen: str) -> subprocess.Popen:
        return subprocess.Popen([*as_pg, tools["postgres"], "-D", str(root / "data"), "-k", str(root),
                                 "-p", str(port), "-c", f"listen_addresses={listen}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    proc = None
    try:
        init = subprocess.run([*as_pg, tools["initdb"], "-D", str(root / "data"), "-U", user, "--auth=trust"],
                              capture_output=True, text=True, timeout=120, cwd=root)
        assert init.returncode == 0, init.stderr
        proc = server("")
        _wait(lambda: socket_check() == 0, 30, "init server on its socket", proc)
        assert healthcheck() != 0, "healthy while only the init server's socket answers"
        _stop(proc, signal.SIGINT)
        proc = server("127.0.0.1")
        _wait(lambda: healthcheck() == 0, 30, "healthcheck over TCP", proc)
    finally:
        if proc is not None:
            _stop(proc, signal.SIGINT)
        shutil.rmtree(root, ignore_errors=True)


# --- liveness healthchecks and the optional Flower ------------------------------------------------


def test_worker_and_beat_healthchecks_run_the_health_commands():
    services = _compose()["services"]
    for name in ("worker", "beat"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD", name
        args = check["test"][1:]
        assert args[:3] == ["newsletter", "health", name], name
        _resolve_newsletter(args[1:])
        assert check["start_period"] and check["retries"] >= 2, name
    # beat's check reads the schedule file beat writes beside.
    beat = services["beat"]
    check = beat["healthcheck"]["test"]
    assert check[check.index("--schedule") + 1] == beat["command"][beat["command"].index("--schedule") + 1]


def _sh_command(service: dict) -> str:
    args = service["command"]
    assert args[:2] == ["sh", "-c"]
    return args[2].replace("$$", "$")  # compose's escape for a literal $


def test_flower_is_optional_on_loopback_and_needs_a_password():
    services = _compose()["services"]
    flower = services["flower"]
    # A service with a profile is started only when the profile is asked for; every other one
    # has none, so a plain `docker compose up` starts no Flower.
    assert flower["profiles"] == ["flower"]
    assert [name for name, s in services.items() if "profiles" in s] == ["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert flower["environment"]["CELERY_BROKER_URL"] == services["worker"]["environment"]["NEWSLETTER_BROKER_URL"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "${FLOWER_BASIC_AUTH:-}"
    assert flower["depends_on"] == {"redis": {"condition": "service_healthy"}}
    script = _sh_command(flower)
    assert script.endswith("exec celery flower --address=0.0.0.0 --port=5555")
    # Without a password the container stops with the reason instead of serving Flower open.
    refused = subprocess.run(["sh", "-c", script.replace("exec celery", "exec echo celery")],
                             env={"PATH": os.environ["PATH"], "FLOWER_BASIC_AUTH": ""},
                             capture_output=True, text=True, timeout=10)
    assert refused.returncode == 2 and "set FLOWER_BASIC_AUTH=user:password" in refused.stderr
    allowed = subprocess.run(["sh", "-c", script.replace("exec celery", "exec echo celery")],
                             env={"PATH": os.environ["PATH"], "FLOWER_BASIC_AUTH": "ops:long-password"},
                             capture_output=True, text=True, timeout=10)
    assert allowed.returncode == 0 and allowed.stdout.startswith("celery flower")
