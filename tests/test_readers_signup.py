"""POST /subscribe: double opt-in, the same answer for everyone, inputs checked as imports
check them, and the form embeddable on the news site (CORS, origins)."""

from __future__ import annotations

import os
import re
import time
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import REDIS_URL, per_xdist_worker, unavailable
from worker.readers.signup import RESEND_AFTER, expire_pending
from worker.store.db import session_scope
from worker.store.models import Subscriber, SubscriberEvent
from worker.web import create_app

# Rate-limit counters live apart from the broker's test database (NEWSLETTER_TEST_REDIS_URL).
RATELIMIT_URL = per_xdist_worker(os.environ.get("NEWSLETTER_TEST_RATELIMIT_URL", REDIS_URL.rsplit("/", 1)[0] + "/3"))
SITE = "https://site.example"
PUBLIC = "https://news.example"


def fresh_ratelimit_url() -> str:
    """The rate-limit Redis database, emptied."""
    import redis

    try:
        redis.Redis.from_url(RATELIMIT_URL, socket_timeout=3).flushdb()
    except Exception as exc:  # noqa: BLE001
        unavailable("Redis", exc)
    return RATELIMIT_URL


def for_readers(settings, **update):
    """Readers' pages on https://news.example, the news site at https://site.example, limits out of the way."""
    return settings.model_copy(update={
        "ratelimit_url": fresh_ratelimit_url(), "subscribe_limit_per_ip": "1000/minute",
        "subscribe_limit_global": "1000/minute", "confirm_limit_per_mailbox": "1000/minute",
        "confirm_limit_per_domain": "1000/minute", "public_url": PUBLIC, "site_url": SITE,
        "region_url": SITE + "/regions/{region}", **update,
    })


@pytest.fixture
def reader_settings(settings):
    return for_readers(settings)


class Readers:
    """The real app in-process; mails through the configured sender (file backend unless told)."""

    def __init__(self, engine, settings, mailer=None):
        self.engine, self.settings = engine, settings
        self.app = create_app(settings, engine, mailer=mailer)
        self.app.testing = True
        self.client = self.app.test_client()

    def settle(self) -> None:
        assert self.app.extensions["newsletter_mailer"].wait_idle(15), "confirmation mails still queued"

    def subscribe(self, email="anna@example.org", regions="RU,UA", name=None, **kwargs):
        data = {"email": email, "regions": regions}
        if name is not None:
            data["name"] = name
        return self.client.post("/subscribe", data=data, **kwargs)

    def mails(self) -> list:
        self.settle()
        paths = sorted(Path(self.settings.outbox_dir).glob("*.eml"), key=lambda p: p.stat().st_mtime_ns)
        return [BytesParser(policy=policy.default).parsebytes(p.read_bytes()) for p in paths]

    def row(self, email="anna@example.org"):
        with session_scope(self.engine) as session:
            return session.scalar(sa.select(Subscriber).where(Subscriber.email_key == email.casefold()))

    def events(self, email="anna@example.org") -> list[tuple[str, str, str, str]]:
        row = self.row(email)
        with session_scope(self.engine) as session:
            return [(e.kind, e.via, e.status, e.regions) for e in session.scalars(
                sa.select(SubscriberEvent).where(SubscriberEvent.subscriber_id == row.id).order_by(SubscriberEvent.id))]


def confirm_path(message) -> str:
    text = message.get_body(("plain",)).get_content()
    return re.search(re.escape(PUBLIC) + r"(/confirm/[A-Za-z0-9._-]+)", text)[1]


def csrf_of(page_text: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page_text)[1]


def confirm(readers: Readers, message):
    """Open the mail's link and press the button, as a reader does (the landing page's answer
    when it has no button: a used or expired link)."""
    path = confirm_path(message)
    landing = readers.client.get(path)
    if landing.status_code != 200:
        return landing
    return readers.client.post(path, data={"csrf": csrf_of(landing.text)})


@pytest.fixture
def readers(engine, settings):
    return Readers(engine, for_readers(settings))


def test_a_sign_up_is_pending_until_the_mailed_link_is_confirmed(readers):
    page = readers.subscribe(name="Anna")
    assert page.status_code == 200 and "Check your inbox" in page.text
    row = readers.row()
    assert (row.status, row.regions, row.name) == ("pending", "RU UA", None)  # the name waits for the confirmation
    [mail] = readers.mails()
    assert mail["To"] == "anna@example.org" and mail["Subject"] == "Confirm your subscription to Melange News Weekly"
    assert mail["Auto-Submitted"] == "auto-generated" and mail["List-Unsubscribe"] is None
    assert "Russia and Ukraine" in " ".join(mail.get_body(("plain",)).get_content().split())
    assert "Anna" not in mail.as_string()
    landing = readers.client.get(confirm_path(mail))
    assert landing.status_code == 200 and "Confirm my subscription" in landing.text
    assert readers.row().status == "pending"  # GET changes nothing: mail scanners follow links
    done = confirm(readers, mail)
    assert done.status_code == 200 and "You are subscribed" in done.text and "/manage/" in done.text
    row = readers.row()
    assert (row.status, row.regions, row.name, row.confirm_nonce) == ("active", "RU UA", "Anna", None)
    assert readers.events() == [("requested", "form", "pending", "RU UA"),
                                ("confirmed", "confirm-link", "active", "RU UA")]


def test_the_answer_is_the_same_for_new_pending_active_and_unsubscribed_addresses(readers, sample_engine):
    from worker.readers.subscribers import SubscriberStatus, set_status

    set_status(sample_engine, "oleksandr.koval@example.com", SubscriberStatus.UNSUBSCRIBED)
    readers.subscribe("pending@example.org")
    pages = {}
    for email in ["new@example.org", "pending@example.org", "anna.petrova@example.org",
                  "oleksandr.koval@example.com"]:
        page = readers.subscribe(email)
        headers = {k: v for k, v in page.headers.items() if k != "Content-Length"}
        pages[email] = (page.status_code, headers, page.text.replace(email, "ADDR"))
        as_json = readers.client.post("/subscribe", json={"email": email, "regions": ["RU"]})
        assert (as_json.status_code, as_json.json["status"]) == (202, "check-your-inbox")
    assert len({repr(p) for p in pages.values()}) == 1
    # Nobody's status changed: an unsubscribed address comes back only by confirming.
    assert readers.row("anna.petrova@example.org").status == "active"
    assert readers.row("oleksandr.koval@example.com").status == "unsubscribed"
    assert readers.row("pending@example.org").status == "pending"


def test_an_unsubscribed_address_is_reactivated_only_by_confirming(readers, sample_engine):
    from worker.readers.subscribers import SubscriberStatus, set_status

    set_status(sample_engine, "anna.petrova@example.org", SubscriberStatus.BOUNCED)
    readers.subscribe("anna.petrova@example.org", regions="DE")
    assert readers.row("anna.petrova@example.org").status == "bounced"
    [mail] = readers.mails()
    assert confirm(readers, mail).status_code == 200
    row = readers.row("anna.petrova@example.org")
    assert (row.status, row.regions, row.name) == ("active", "DE", "Anna Petrova")
    assert readers.events("anna.petrova@example.org")[-2:] == [
        ("requested", "form", "bounced", "RU UA"), ("reactivated", "confirm-link", "active", "DE")]


def test_an_active_reader_who_signs_up_again_is_asked_to_confirm_the_new_regions(readers, sample_engine):
    readers.subscribe("anna.petrova@example.org", regions="PL")
    assert readers.row("anna.petrova@example.org").regions == "RU UA"
    [mail] = readers.mails()
    assert mail["Subject"] == "Confirm the change to your Melange News Weekly"
    assert "You already get Melange News Weekly" in " ".join(mail.get_body(("plain",)).get_content().split())
    confirm(readers, mail)
    assert readers.row("anna.petrova@example.org").regions == "PL"


def test_at_most_one_confirmation_mail_an_hour_per_address(readers):
    for _ in range(5):
        assert readers.subscribe("Anna@Example.org").status_code == 200
    assert len(readers.mails()) == 1
    with session_scope(readers.engine) as session:
        session.execute(sa.update(Subscriber).values(
            confirm_sent_at=datetime.now(UTC) - RESEND_AFTER - timedelta(seconds=1)))
    readers.subscribe("anna@example.org", regions="UA")
    first, second = readers.mails()
    # The newer link replaces the older one, which is refused from then on.
    assert confirm(readers, first).status_code == 410
    assert confirm(readers, second).status_code == 200
    assert readers.row().regions == "UA"


def test_a_mail_that_could_not_be_sent_is_recorded_and_can_be_asked_for_again(engine, reader_settings):
    from worker.delivery.outcome import Outcome, SendResult
    from worker.delivery.senders import MemorySender
    from worker.web.mailer import ConfirmationMailer

    sender = MemorySender(failures={"anna@example.org": SendResult(Outcome.TEMPORARY, 451, "4.3.0 try later")})
    mailer = ConfirmationMailer(engine, reader_settings, sender_factory=lambda _s: sender)
    readers = Readers(engine, reader_settings, mailer)
    readers.subscribe()
    readers.settle()
    assert readers.events()[-1] == ("confirm-failed", "form", "pending", "RU UA")
    sender.failures.clear()
    readers.subscribe()  # not an hour later: the failed one did not count
    readers.settle()
    assert [m.recipient for m in sender.outbox] == ["anna@example.org"]


@pytest.mark.parametrize(("fields", "error"), [
    ({"email": "not an address"}, "An email address must have an @-sign"),
    ({"email": ""}, "No email address"),
    ({"email": "a" * 400 + "@example.org"}, "Email address too long"),
    ({"regions": "XX"}, "Unknown region code"),
    ({"regions": ""}, "Choose at least one region"),
    ({"regions": ",".join(["RU", "UA", "DE", "FR", "GB", "US", "PL", "IT", "ES", "PT", "NL", "BE", "AT", "CH",
                           "CZ", "SK", "HU", "RO", "BG", "GR", "TR"])}, "Too many regions"),
    ({"regions": "RU " * 1000}, "Too many regions"),
    ({"name": "Anna\r\nBcc: victim@example.org"}, "Name contains a line break or control character"),
    ({"name": "Anna\u2028Bcc: x@example.org"}, "Name contains a line break or control character"),
    ({"name": "x" * 201}, "Name too long"),
])
def test_bad_fields_are_refused_as_imports_refuse_them_and_nothing_is_stored(readers, fields, error):
    data = {"email": "anna@example.org", "regions": "RU", **fields}
    page = readers.client.post("/subscribe", data=data)
    assert page.status_code == 400 and error in page.text, page.text[-800:]
    assert 'role="alert"' in page.text and 'aria-invalid="true"' in page.text
    as_json = readers.client.post("/subscribe", json=data)
    assert as_json.status_code == 400 and error in as_json.json["error"]
    assert readers.row() is None and readers.mails() == []


@pytest.mark.parametrize("body", [[1, 2], "text", {"email": ["a@example.org"], "regions": "RU"},
                                  {"email": "a@example.org", "regions": [1]},
                                  {"email": "a@example.org", "regions": "RU", "name": {"x": 1}}])
def test_json_of_the_wrong_shape_is_a_400_not_a_500(readers, body):
    page = readers.client.post("/subscribe", json=body)
    assert page.status_code == 400 and page.json["error"]


def test_json_that_is_not_json_or_nested_too_deep_is_a_400(readers):
    for body in ["{", "[" * 50_000, "\xff\xfe", '{"email": "a@example.org", "regions": "RU"' + "}" * 2]:
        page = readers.client.post("/subscribe", data=body.encode("utf-8", "surrogateescape"),
                                   content_type="application/json")
        assert page.status_code == 400 and page.json["error"], body[:20]


def test_bodies_past_64_kb_are_refused_unread(readers):
    page = readers.client.post("/subscribe", data={"email": "a@example.org", "regions": "RU", "name": "x" * 70_000})
    assert page.status_code == 413
    too_many = readers.client.post("/subscribe", data="&".join(f"f{n}=1" for n in range(500)),
                                   content_type="application/x-www-form-urlencoded")
    assert too_many.status_code in (400, 413) and readers.row("a@example.org") is None


def test_a_name_that_decodes_to_a_header_line_stays_text(readers):
    sneaky = "=?utf-8?b?eA0KQmNjOiB2QGV2aWwuZXhhbXBsZQ==?="  # decodes to "x\r\nBcc: v@evil.example"
    readers.subscribe(name=sneaky)
    [mail] = readers.mails()
    assert mail["Bcc"] is None and "evil" not in mail.as_string()
    confirm(readers, mail)
    assert readers.row().name == sneaky


def test_the_region_defaults_to_the_news_page_the_form_was_on(readers):
    readers.client.post("/subscribe", data={"email": "anna@example.org"},
                        headers={"Referer": SITE + "/regions/ua/2025/01/31/grid", "Origin": SITE})
    assert readers.row().regions == "UA"


def test_a_form_posted_from_another_site_is_refused(readers):
    for origin in ["https://evil.example", "null", "https://site.example.evil.example"]:
        page = readers.subscribe(headers={"Origin": origin})
        assert page.status_code == 403
    page = readers.subscribe(headers={"Referer": "https://evil.example/page"})
    assert page.status_code == 403 and readers.row() is None
    assert readers.subscribe(headers={"Origin": SITE}).status_code == 200
    assert readers.subscribe("b@example.org", headers={"Origin": PUBLIC}).status_code == 200
    assert readers.subscribe("c@example.org").status_code == 200  # no Origin: not a browser


def test_cors_lets_the_news_site_call_it_with_fetch_and_nobody_else(readers):
    pre = readers.client.options("/subscribe", headers={
        "Origin": SITE, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert pre.status_code == 204 and pre.headers["Access-Control-Allow-Origin"] == SITE
    assert pre.headers["Access-Control-Allow-Methods"] == "POST" and "Origin" in pre.headers["Vary"]
    assert "Access-Control-Allow-Credentials" not in pre.headers
    other = readers.client.options("/subscribe", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    done = readers.client.post("/subscribe", json={"email": "anna@example.org", "regions": "RU"},
                               headers={"Origin": SITE})
    assert done.status_code == 202 and done.headers["Access-Control-Allow-Origin"] == SITE


def test_extra_origins_can_be_allowed(engine, reader_settings):
    readers = Readers(engine, reader_settings.model_copy(update={"subscribe_origins": "https://blog.example"}))
    assert readers.subscribe(headers={"Origin": "https://blog.example"}).status_code == 200


def test_the_sign_up_page_works_without_the_news_site(readers):
    page = readers.client.get("/subscribe?regions=RU")
    assert page.status_code == 200 and 'name="regions" value="RU"' in page.text
    assert 'label for="email"' in page.text and '<html lang="en">' in page.text
    plain = readers.client.get("/subscribe")
    assert '<select id="regions" name="regions" required>' in plain.text and ">Ukraine</option>" in plain.text


def test_pending_sign_ups_are_never_planned_and_expire(readers, sample_engine, reader_settings):
    from worker.delivery.plan import plan_edition
    from worker.digest import week_window

    readers.subscribe("new@example.org", regions="RU")
    planned = plan_edition(sample_engine, key="weekly-2025-W05", kind="weekly", window=week_window("2025-W05", reader_settings.tz),
                           now=datetime(2025, 2, 3, 7, tzinfo=UTC))
    with session_scope(sample_engine) as session:
        planned_ids = set(session.scalars(sa.text("SELECT subscriber_id FROM deliveries WHERE edition_id = :e"),
                                          {"e": planned.edition_id}))
    assert readers.row("new@example.org").id not in planned_ids
    assert expire_pending(sample_engine, now=datetime.now(UTC), after=timedelta(days=7)) == 0
    assert expire_pending(sample_engine, now=datetime.now(UTC) + timedelta(days=8), after=timedelta(days=7)) == 1
    assert readers.row("new@example.org") is None
    assert readers.row("anna.petrova@example.org") is not None  # only pending ones go


def test_an_operator_import_activates_a_pending_sign_up(readers, tmp_path):
    from worker.readers.subscribers import import_csv

    readers.subscribe(name="Anna")
    [mail] = readers.mails()
    path = tmp_path / "list.csv"
    path.write_text("email,name,regions\nanna@example.org,Anna P,DE\n")
    report = import_csv(readers.engine, path)
    assert (report.updated, report.suppressed) == (1, 0)
    assert (readers.row().status, readers.row().regions) == ("active", "DE")
    assert confirm(readers, mail).status_code == 410  # its link died with the import
    assert readers.events()[-1] == ("subscribed", "import", "active", "DE")


@pytest.mark.slow
def test_no_answer_waits_for_the_mail_server(engine, reader_settings, smtp_server):
    """Whether a mail goes out does not show in the response time: SMTP is off the request."""
    smtp_server.plan.delay = 1.0
    settings = reader_settings.model_copy(update={
        "email_backend": "smtp", "smtp_host": "127.0.0.1", "smtp_port": smtp_server.port, "smtp_timeout": 5})
    readers = Readers(engine, settings)
    readers.subscribe("warmup@example.org")
    readers.settle()
    timings = []
    for n in range(3):
        started = time.perf_counter()
        assert readers.subscribe(f"new{n}@example.org").status_code == 200  # each sends a mail
        timings.append(time.perf_counter() - started)
    assert max(timings) < 0.6, timings  # each mail takes the server 1 s
    readers.settle()
    assert smtp_server.count_for("new2@example.org") == 1
