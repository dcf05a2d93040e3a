"""Settings: defaults, file, environment, secrets and one-line errors."""

import json
from pathlib import Path

import pytest

from worker.errors import ConfigError
from worker.settings import load_settings


def test_defaults_match_the_design():
    s = load_settings({})
    assert s.database_url == "sqlite:///var/newsletter.db"
    assert s.broker_url == "redis://localhost:6379/0"
    assert (s.email_backend, s.outbox_dir) == ("file", Path("var/outbox"))
    assert (s.smtp_host, s.smtp_port, s.smtp_security, s.smtp_timeout) == ("localhost", 25, "none", 30)
    assert s.from_address == "Melange News <digest@localhost>"
    assert (s.public_url, s.secret_key, s.timezone) == ("http://127.0.0.1:8000", None, "UTC")
    assert (s.send_rate, s.stories_per_region, s.max_attempts) == (0, 5, 5)
    assert (s.dkim_selector, s.dkim_domain, s.dkim_key_file) == ("", "", "")


def test_file_then_environment_later_wins(tmp_path):
    Path("config").mkdir()
    Path("config/newsletter.toml").write_text(
        'smtp_host = "relay.example"\nsmtp_port = 2525\nfrom = "Desk <desk@news.example>"\n'
        '[region_names]\nRU = "Russia"\n'
    )
    s = load_settings({"NEWSLETTER_SMTP_PORT": "587"})
    assert (s.smtp_host, s.smtp_port) == ("relay.example", 587)
    assert s.sender.domain == "news.example" and s.region_names == {"RU": "Russia"}
    other = tmp_path / "other.toml"
    other.write_text('timezone = "Europe/Berlin"\n')
    assert load_settings({"NEWSLETTER_CONFIG": str(other)}).timezone == "Europe/Berlin"


@pytest.mark.parametrize(("env", "message"), [
    ({"NEWSLETTER_SMTP_PORT": "abc"},
     "setting NEWSLETTER_SMTP_PORT: Input should be a valid integer, unable to parse string as an integer (got 'abc')"),
    ({"NEWSLETTER_SMTP_SECURITY": "ssl"},
     "setting NEWSLETTER_SMTP_SECURITY: Input should be 'none', 'starttls' or 'tls' (got 'ssl')"),
    ({"NEWSLETTER_TIMEZONE": "Mars/Olympus"},
     "setting NEWSLETTER_TIMEZONE: unknown time zone 'Mars/Olympus' (got 'Mars/Olympus')"),
    ({"NEWSLETTER_FROM": "News\r\nBcc: x@y"},
     "setting NEWSLETTER_FROM: must not contain control characters or line breaks (got 'News\\r\\nBcc: x@y')"),
    ({"NEWSLETTER_STORIES_PER_REGION": "0"},
     "setting NEWSLETTER_STORIES_PER_REGION: Input should be greater than or equal to 1 (got '0')"),
    ({"NEWSLETTER_CONFIG": "/nonexistent/x.toml"},
     "cannot read config file /nonexistent/x.toml: No such file or directory"),
])
def test_bad_values_name_the_setting(env, message):
    with pytest.raises(ConfigError) as err:
        load_settings(env)
    assert str(err.value) == message


def test_secrets_only_from_the_environment_and_never_echoed(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('smtp_password = "hunter2"\n')
    with pytest.raises(ConfigError) as err:
        load_settings({"NEWSLETTER_CONFIG": str(cfg)})
    assert str(err.value) == (
        f"setting smtp_password is a secret: set NEWSLETTER_SMTP_PASSWORD in the environment, not in {cfg}"
    )
    assert "hunter2" not in str(err.value)
    s = load_settings({"NEWSLETTER_SMTP_PASSWORD": "hunter2", "NEWSLETTER_SECRET_KEY": "k3y"})
    assert s.smtp_password.get_secret_value() == "hunter2"
    assert "hunter2" not in repr(s) and "k3y" not in repr(s) and "k3y" not in str(s.model_dump())


def test_unknown_keys_in_the_file_are_errors(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('smtp_hots = "x"\n')
    with pytest.raises(ConfigError) as err:
        load_settings({"NEWSLETTER_CONFIG": str(cfg)})
    assert str(err.value) == f"unknown setting 'smtp_hots' in {cfg}"


def test_the_cli_turns_a_bad_setting_into_one_line_and_exit_2(run_cli):
    result = run_cli("db", "upgrade", env={"NEWSLETTER_SEND_RATE": "fast"})
    assert result.code == 2
    assert result.err == (
        "error: setting NEWSLETTER_SEND_RATE: Input should be a valid number, "
        "unable to parse string as a number (got 'fast')\n"
    )
    assert result.out == ""


def test_the_repo_config_file_is_valid():
    from tests.conftest import REPO

    s = load_settings({"NEWSLETTER_CONFIG": str(REPO / "config" / "newsletter.toml")})
    assert s.email_backend == "file"


def test_unknown_variables_are_found_with_the_closest_setting():
    from worker.settings import unknown_env_vars

    env = {"NEWSLETTER_SMTP_PROT": "25", "NEWSLETTER_SECRETKEY": "x", "NEWSLETTER_ZZZ": "1",
           "NEWSLETTER_SMTP_PORT": "25", "NEWSLETTER_CONFIG": "c.toml", "NEWSLETTER_DEBUG": "1",
           "NEWSLETTER_TEST_POSTGRES_URL": "x", "NEWSLETTER_BENCH_REDIS_URL": "x", "PATH": "/bin"}
    assert unknown_env_vars(env) == [("NEWSLETTER_SECRETKEY", "NEWSLETTER_SECRET_KEY"),
                                     ("NEWSLETTER_SMTP_PROT", "NEWSLETTER_SMTP_PORT"),
                                     ("NEWSLETTER_ZZZ", None)]


def test_each_value_knows_where_it_came_from(tmp_path):
    from worker.settings import load_settings_with_sources

    cfg = tmp_path / "c.toml"
    cfg.write_text('smtp_host = "relay.example"\nfrom = "Desk <desk@news.example>"\n')
    settings, sources = load_settings_with_sources({"NEWSLETTER_CONFIG": str(cfg), "NEWSLETTER_SMTP_PORT": "587"})
    assert (settings.smtp_host, settings.smtp_port) == ("relay.example", 587)
    assert sources["smtp_host"] == sources["from_address"] == f"file {cfg}"
    assert sources["smtp_port"] == "NEWSLETTER_SMTP_PORT"
    assert sources["timezone"] == "default"
    assert set(sources) == set(type(settings).model_fields)


@pytest.mark.parametrize(("color", "shown"), [("#777777", "4.47:1"), ("#ffcc00", "1.51:1"), ("#FFFFFF", "1.00:1")])
def test_a_brand_colour_the_white_header_text_cannot_be_read_on_is_refused_with_its_ratio(run_cli, color, shown):
    # WCAG 2's relative luminance: #777777 on white is 4.48:1, just under AA's 4.5:1.
    result = run_cli("config", env={"NEWSLETTER_BRAND_COLOR": color})
    assert result.code == 2
    [line] = result.err.strip().splitlines()
    assert line.startswith("error: setting NEWSLETTER_BRAND_COLOR: contrast ") and shown in line and "4.5:1" in line


@pytest.mark.parametrize("color", ["#767676", "#b3261e", "#000000", "#1a73e8"])
def test_a_brand_colour_with_enough_contrast_is_kept(color):
    assert load_settings({"NEWSLETTER_BRAND_COLOR": color}).brand_color == color


HTTP_WARNING = "warning: NEWSLETTER_PUBLIC_URL is http:// with the smtp backend: Gmail and Yahoo ignore a " \
               "List-Unsubscribe that is not https (RFC 8058 one-click); set an https:// URL"


def test_config_warns_that_an_http_public_url_leaves_real_mail_without_one_click_unsubscribe(run_cli):
    smtp = {"NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_PUBLIC_URL": "http://news.example"}
    # A loopback URL is this machine's own test setup (the default; a local relay): no mail to Gmail.
    assert "warning:" not in run_cli("config", env={"NEWSLETTER_EMAIL_BACKEND": "smtp"}).err
    result = run_cli("config", env=smtp)
    assert result.code == 0 and HTTP_WARNING in result.err.splitlines()
    listed = run_cli("config", "--json", env=smtp)
    assert json.loads(listed.out)["warnings"] == [HTTP_WARNING.removeprefix("warning: ")]
    # https, or mail that never leaves this machine (the file outbox): nothing to warn about.
    assert "warning:" not in run_cli("config", env={**smtp, "NEWSLETTER_PUBLIC_URL": "https://news.example"}).err
    assert "warning:" not in run_cli("config", env={**smtp, "NEWSLETTER_EMAIL_BACKEND": "file"}).err


def test_a_send_over_smtp_with_an_http_public_url_warns_and_still_sends(run_cli, engine, tmp_path, smtp_server):
    """To a sink (Mailpit) it warns and sends; to a real relay `newsletter check` refuses it."""
    from tests.support.data import add_subscribers, load_stories

    load_stories(engine, tmp_path)
    add_subscribers(engine, 2)
    env = {"NEWSLETTER_EMAIL_BACKEND": "smtp", "NEWSLETTER_SMTP_HOST": "127.0.0.1",
           "NEWSLETTER_SMTP_PORT": str(smtp_server.port), "NEWSLETTER_SECRET_KEY": "a-secret-key-for-this-test-" * 2,
           "NEWSLETTER_PUBLIC_URL": "http://news.example", "NEWSLETTER_BROKER_URL": "redis://127.0.0.1:1/0"}
    refused = run_cli("send", "--week", "2025-W05", "--inline", env=env)
    assert refused.code == 2 and "NEWSLETTER_PUBLIC_URL: http://news.example is not https://" in refused.err
    assert smtp_server.received == []
    result = run_cli("send", "--week", "2025-W05", "--inline", env={**env, "NEWSLETTER_SMTP_SINK": "true"})
    assert result.code == 0 and HTTP_WARNING in result.err.splitlines()
    assert len(smtp_server.received) == 2
    assert smtp_server.received[0].message["List-Unsubscribe"].strip().startswith("<http://news.example/unsubscribe/")
