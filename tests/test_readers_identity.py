"""Who a reader is (issue 21): an old link never opens someone else's subscription, address
keys do not merge different mailboxes, a sign-up never renames or retimes a known reader,
and address variants do not add up to a flood of confirmation mails. On both databases."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser

import pytest
import sqlalchemy as sa
from itsdangerous import URLSafeSerializer
from pydantic import SecretStr

from tests.test_readers_signup import PUBLIC, Readers, confirm, confirm_path, for_readers
from worker.digest import week_window
from worker.ingest import import_sources
from worker.preview import build_preview
from worker.readers.subscribers import add_subscriber, check_address, make_input, purge_subscriber
from worker.render.links import links
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Delivery, Edition, Story, StoryRegion, Subscriber, SubscriberEvent
from worker.tokens import UNSUBSCRIBE_SALT

SECRET = "test-secret-key"


@pytest.fixture
def readers(engine, settings):
    return Readers(engine, for_readers(settings))


def _row(engine, email: str) -> Subscriber | None:
    key = check_address(email)[1]
    with session_scope(engine) as session:
        return session.scalar(sa.select(Subscriber).where(Subscriber.email_key == key))


def _mailed_links(readers, email: str) -> tuple[str, str]:
    """The manage and unsubscribe paths a digest to this reader carries (the production links())."""
    row = _row(readers.engine, email)
    urls = links(readers.settings, secret=SECRET, edition_key="weekly-2025-W05", variant_key="RU",
                 subscriber_id=row.id, link_key=row.link_key)
    return urls.manage.removeprefix(PUBLIC), urls.unsubscribe.removeprefix(PUBLIC)


def _sign_up_and_confirm(readers, email: str, **fields) -> None:
    before = len(readers.mails())
    assert readers.subscribe(email, regions="UA", **fields).status_code == 200
    mail = readers.mails()[before]
    assert confirm(readers, mail).status_code == 200


# 2. Ids never reused; links die with their row


def test_ids_are_never_handed_out_twice_after_a_purge(engine):
    for email in ("a@example.org", "b@example.org"):
        add_subscriber(engine, make_input(email, None, "RU"))
    purged = _row(engine, "b@example.org").id
    assert purge_subscriber(engine, "b@example.org")
    add_subscriber(engine, make_input("c@example.org", None, "RU"))
    assert _row(engine, "c@example.org").id > purged
    # Editions and deliveries (a delivery id is a VERP tag) the same way.
    now = datetime(2025, 2, 3, tzinfo=UTC)
    with session_scope(engine) as session:
        edition = Edition(key="weekly-2025-W05", kind="weekly", label="2025-W05", window_start=now,
                          window_end=now, total=1)
        session.add(edition)
        session.flush()
        session.add(Delivery(edition_id=edition.id, subscriber_id=_row(engine, "a@example.org").id, regions="RU"))
        session.flush()
        old_edition, old_delivery = edition.id, session.scalar(sa.select(sa.func.max(Delivery.id)))
    with session_scope(engine) as session:
        session.execute(sa.delete(Edition))  # the delivery goes with it (ON DELETE CASCADE)
    with session_scope(engine) as session:
        edition = Edition(key="weekly-2025-W06", kind="weekly", label="2025-W06", window_start=now,
                          window_end=now, total=1)
        session.add(edition)
        session.flush()
        delivery = Delivery(edition_id=edition.id, subscriber_id=_row(engine, "a@example.org").id, regions="RU")
        session.add(delivery)
        session.flush()
        assert edition.id > old_edition and delivery.id > old_delivery


def test_a_purged_readers_old_links_do_not_open_the_next_readers_page(readers):
    """Purge the newest reader, a stranger signs up: the old mail's links are a clean 410."""
    _sign_up_and_confirm(readers, "old@example.org", name="Old Reader")
    confirm_link = confirm_path(readers.mails()[0])
    manage, unsubscribe = _mailed_links(readers, "old@example.org")
    assert readers.client.get(manage).status_code == 200
    assert purge_subscriber(readers.engine, "old@example.org")
    _sign_up_and_confirm(readers, "new@example.org", name="New Reader")
    new = _row(readers.engine, "new@example.org")
    for path in (manage, f"{manage}/leave/UA"):
        page = readers.client.get(path)
        assert page.status_code == 410 and "new@example.org" not in page.text and "New Reader" not in page.text
    assert readers.client.get(unsubscribe).status_code == 410
    assert readers.client.post(unsubscribe, data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded").status_code == 410
    assert readers.client.get(confirm_link).status_code == 410  # its nonce was the old row's
    assert _row(readers.engine, "new@example.org").status == "active"
    # The new reader's own links work.
    new_manage, _ = _mailed_links(readers, "new@example.org")
    assert readers.client.get(new_manage).status_code == 200 and new.status == "active"


def test_a_link_opens_only_the_row_it_was_made_for(readers):
    """Whatever the ids do (a restored backup, a hand-made row): a row in the old row's
    place, with its id, does not open to the old links."""
    _sign_up_and_confirm(readers, "old@example.org")
    manage, unsubscribe = _mailed_links(readers, "old@example.org")
    old_id = _row(readers.engine, "old@example.org").id
    with session_scope(readers.engine) as session:
        session.execute(sa.delete(Subscriber).where(Subscriber.id == old_id))
        session.add(Subscriber(id=old_id, email="new@example.org", email_key="new@example.org", regions="RU",
                               status="active"))
    assert readers.client.get(manage).status_code == 410
    assert readers.client.post(unsubscribe, data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded").status_code == 410
    assert _row(readers.engine, "new@example.org").status == "active"


def test_id_only_links_from_before_keys_unsubscribe_only_rows_from_then(readers):
    """Mail sent before migration 0015 carries id-only links: RFC 8058 one-click keeps working
    for the rows that existed then, and opens nothing else (no manage page, no newer row)."""
    add_subscriber(readers.engine, make_input("then@example.org", None, "RU"))
    add_subscriber(readers.engine, make_input("since@example.org", None, "RU"))
    then, since = _row(readers.engine, "then@example.org"), _row(readers.engine, "since@example.org")
    with session_scope(readers.engine) as session:
        session.execute(sa.update(Subscriber).where(Subscriber.id == then.id).values(legacy_links=True))
    legacy = URLSafeSerializer(SECRET, salt=UNSUBSCRIBE_SALT).dumps
    manage_legacy = URLSafeSerializer(SECRET, salt="newsletter.manage.v1").dumps(then.id)
    page = readers.client.get(f"/manage/{manage_legacy}")
    assert page.status_code == 410 and "older newsletter" in page.text
    assert readers.client.post(f"/unsubscribe/{legacy(since.id)}", data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded").status_code == 410
    done = readers.client.post(f"/unsubscribe/{legacy(then.id)}", data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded")
    assert done.status_code == 200
    assert _row(readers.engine, "then@example.org").status == "unsubscribed"
    assert _row(readers.engine, "since@example.org").status == "active"


# 3. Address keys


def test_different_idna_2008_domains_are_different_readers(readers):
    """user@straße.de is not user@strasse.de: the stranger's sign-up does not take the
    reader's place, and the operator's add of the real address adds it."""
    assert readers.subscribe("user@straße.de").status_code == 200
    assert add_subscriber(readers.engine, make_input("user@strasse.de", "Real", "RU")) == "added"
    assert _row(readers.engine, "user@strasse.de").name == "Real"
    assert _row(readers.engine, "user@straße.de").status == "pending"
    assert _row(readers.engine, "user@xn--strae-oqa.de").email == "user@straße.de"
    with session_scope(readers.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 2


# 7. What a sign-up may change


def test_the_confirm_page_shows_the_name_and_zone_before_storing_them(readers):
    page = readers.client.post("/subscribe", data={"email": "anna@example.org", "regions": "RU",
                                                   "name": "Anna K", "timezone": "Asia/Tokyo"})
    assert page.status_code == 200
    [mail] = readers.mails()
    landing = readers.client.get(confirm_path(mail))
    assert landing.status_code == 200
    assert re.search(r'class="stored-name">Anna K<', landing.text)
    assert re.search(r'class="stored-zone">Asia/Tokyo<', landing.text)
    row = _row(readers.engine, "anna@example.org")
    assert (row.name, row.timezone) == (None, None)  # shown, not stored yet
    assert confirm(readers, mail).status_code == 200
    row = _row(readers.engine, "anna@example.org")
    assert (row.name, row.timezone) == ("Anna K", "Asia/Tokyo")


@pytest.mark.parametrize("status", ["active", "unsubscribed"])
def test_a_sign_up_never_renames_or_retimes_a_known_reader(readers, status):
    add_subscriber(readers.engine, make_input("anna@example.org", "Anna", "RU", "Europe/Berlin"))
    if status != "active":
        with session_scope(readers.engine) as session:
            session.execute(sa.update(Subscriber).values(status=status))
    stranger = "ACTION REQUIRED: verify at https://evil.example"
    readers.client.post("/subscribe", data={"email": "anna@example.org", "regions": "RU,UA", "name": stranger,
                                            "timezone": "Pacific/Kiritimati"})
    [mail] = readers.mails()
    landing = readers.client.get(confirm_path(mail))
    assert "evil.example" not in landing.text and "Kiritimati" not in landing.text
    assert confirm(readers, mail).status_code == 200
    row = _row(readers.engine, "anna@example.org")
    assert (row.status, row.regions, row.name, row.timezone) == ("active", "RU UA", "Anna", "Europe/Berlin")
    with session_scope(readers.engine) as session:
        kinds = set(session.scalars(sa.select(SubscriberEvent.kind)))
    assert "name-changed" not in kinds and "zone-changed" not in kinds


def test_a_request_stored_before_the_rule_does_not_rename_a_known_reader(readers):
    """A row whose pending request carries a name (stored by the code before) keeps its own."""
    add_subscriber(readers.engine, make_input("anna@example.org", "Anna", "RU"))
    readers.subscribe("anna@example.org", regions="RU")
    with session_scope(readers.engine) as session:
        session.execute(sa.update(Subscriber).values(confirm_name="Mallory", confirm_timezone="Asia/Tokyo"))
    [mail] = readers.mails()
    assert confirm(readers, mail).status_code == 200
    row = _row(readers.engine, "anna@example.org")
    assert (row.name, row.timezone) == ("Anna", None)


# 8. Confirmation mails per mailbox and domain


def _defaults(settings, **update) -> Settings:
    """The readers' settings with the confirmation limits at their defaults (or as given)."""
    fields = Settings.model_fields
    limits = {name: fields[name].default for name in ("confirm_limit_per_mailbox", "confirm_limit_per_domain")}
    return for_readers(settings, **{**limits, **update})


def _refused(readers) -> dict[str, float]:
    token = readers.settings.operator_token.get_secret_value()
    text = readers.client.get("/metrics", headers={"Authorization": f"Bearer {token}"}).text
    return {m[1]: float(m[2]) for m in re.finditer(r'newsletter_confirmations_refused_total\{limit="(\w+)"\} (\S+)',
                                                    text)}


def test_address_variants_get_at_most_the_mailboxs_share_of_mails_at_default_settings(engine, settings):
    readers = Readers(engine, _defaults(settings, operator_token=SecretStr("metrics-token")))
    variants = ["victim+1@example.org", "victim+2@example.org", "Victim+3@example.org", "victim@example.org",
                "victim+news@example.org", "v.i.c.t.i.m@gmail.com", "victim@gmail.com", "VICTIM+x@googlemail.com",
                "vic.tim+2@gmail.com"]
    for email in variants:
        assert readers.subscribe(email).status_code == 200  # the same answer, mail or not
    mails = readers.mails()
    to = [m["To"] for m in mails]
    # Defaults: three mails an hour per mailbox.
    assert to == ["victim+1@example.org", "victim+2@example.org", "Victim+3@example.org",
                  "v.i.c.t.i.m@gmail.com", "victim@gmail.com", "VICTIM+x@googlemail.com"]
    assert _refused(readers) == {"mailbox": 3.0, "domain": 0.0}
    # Each refused one is on record, and can ask again later (its hour's hold released).
    row = _row(engine, "victim@example.org")
    assert row.confirm_sent_at is None
    with session_scope(engine) as session:
        notes = session.scalars(sa.select(SubscriberEvent.note).where(SubscriberEvent.subscriber_id == row.id,
                                                                      SubscriberEvent.kind == "confirm-failed"))
        assert list(notes) == ["not sent: the mailbox limit of confirmation mails is spent"]


def test_one_domain_gets_at_most_its_share_of_mails(engine, settings):
    readers = Readers(engine, _defaults(settings, confirm_limit_per_domain="4/hour",
                                        operator_token=SecretStr("metrics-token")))
    for n in range(6):
        readers.subscribe(f"person{n}@small.example")
    readers.subscribe("someone@other.example")
    assert [m["To"] for m in readers.mails()] == [*(f"person{n}@small.example" for n in range(4)),
                                                 "someone@other.example"]
    assert _refused(readers) == {"mailbox": 0.0, "domain": 2.0}


def test_a_few_clients_cannot_stop_the_sign_ups_of_a_large_provider(engine, settings, caplog):
    """The domain limit (here 4 an hour) holds back a small domain's mails, with a warning,
    and never gmail.com's: spending it there would block every gmail.com reader."""
    readers = Readers(engine, _defaults(settings, confirm_limit_per_domain="4/hour",
                                        operator_token=SecretStr("metrics-token")))
    for n in range(6):
        readers.subscribe(f"reader{n}@gmail.com")
        readers.subscribe(f"reader{n}@small.example")
    to = [m["To"] for m in readers.mails()]
    assert sorted(to) == sorted([*(f"reader{n}@gmail.com" for n in range(6)),
                                 *(f"reader{n}@small.example" for n in range(4))])
    assert _refused(readers) == {"mailbox": 0.0, "domain": 2.0}
    assert caplog.text.count("confirmation mail to a reader at small.example held back: the domain's limit") == 2


def test_a_domains_limit_counts_its_mailboxes_not_its_mails(engine, settings):
    readers = Readers(engine, _defaults(settings, confirm_limit_per_domain="4/hour",
                                        operator_token=SecretStr("metrics-token")))
    asked = ["pat+1@small.example", "pat+2@small.example", "Pat+3@small.example",
             *(f"person{n}@small.example" for n in range(4))]
    for email in asked:
        readers.subscribe(email)
    # pat's three mails (their mailbox's limit) are one mailbox of the domain's four.
    assert [m["To"] for m in readers.mails()] == asked[:6]
    assert _refused(readers) == {"mailbox": 0.0, "domain": 1.0}


# 10. Encoded-word addresses


@pytest.mark.parametrize("email", ["=?utf-8?b?dmljdGltQGV4YW1wbGUub3Jn?=@example.org",
                                   "=?UTF-8?Q?a=40b?=@example.org", '"=?utf-8?q?x?="@example.org',
                                   "news=?iso-8859-1?b?YQ==?=x@example.org"])
def test_encoded_word_addresses_are_refused_at_sign_up(readers, email):
    page = readers.client.post("/subscribe", data={"email": email, "regions": "RU"})
    assert page.status_code == 400 and "encoded-word" in page.text
    as_json = readers.client.post("/subscribe", json={"email": email, "regions": "RU"})
    assert as_json.status_code == 400 and "encoded-word" in as_json.json["errors"]["email"]
    with session_scope(readers.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Subscriber)) == 0
    assert readers.mails() == []


# 12. Invisible format characters where a person reads text

BIDI = "\u202e\u2066\u200b\ufeff\u00ad\u2060"


@pytest.mark.parametrize("email", ["bob@example.org", "bøb@example.org"])  # the fast path and the reference one
def test_no_invisible_or_reordering_character_reaches_to_greeting_or_subject(engine, settings, tmp_path, email):
    """Stored before the input checks (a name and a title holding U+202E and friends), and
    through ingestion: the message as written, decoded, has none in To, greeting or Subject."""

    items = [{"id": "s1", "url": "https://news.example/1", "title": f"Votes{BIDI} counted\u202e evil",
              "summary": "x", "regions": ["RU"], "published_at": "2025-01-28T10:00:00Z"}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(items))
    assert not import_sources(engine, [str(path)]).rejected
    with session_scope(engine) as session:
        assert session.scalar(sa.select(Story.title)) == "Votes counted evil"
        session.add(Story(guid="s2", url="https://news.example/2", title=f"Old{BIDI} title",
                          published_at=datetime(2025, 1, 29, 10, tzinfo=UTC), regions=[StoryRegion(region="RU")]))
        session.add(Subscriber(email=email, email_key=email, name=f"Bob{BIDI}\u202egnp.exe", regions="RU",
                               status="active"))
    composed = build_preview(engine, settings, window=week_window("2025-W05", settings.tz), email=email).composed
    message = BytesParser(policy=policy.default).parsebytes(composed.data)
    to = message["To"].addresses[0]
    text = message.get_body(("plain",)).get_content()
    # Ours, not data: the layout pads the preheader with zero-width and no-break spaces.
    html = message.get_body(("html",)).get_content().replace("\u200b\u00a0", "")
    written = [to.display_name, str(message["Subject"]), text, html]
    assert to.display_name == "Bobgnp.exe"
    assert text.lstrip().startswith("Hello Bobgnp.exe,")
    assert "Votes counted evil" in text and "Old title" in text
    for value in written:
        assert not [ch for ch in value if ch in BIDI or ch in "\u202a\u202b\u202c\u202d\u2067\u2068\u2069\u200e\u200f"]


def test_summaries_and_sources_lose_invisible_format_characters_at_ingestion(engine, tmp_path):
    items = [{"id": "s1", "url": "https://news.example/1", "title": "T", "regions": ["RU"],
              "summary": f"<p>Read{BIDI} <a href=\"https://x.example/\u202e\">this\u202e</a></p>",
              "source": f"Wire{BIDI}", "published_at": "2025-01-28T10:00:00Z"}]
    path = tmp_path / "s.json"
    path.write_text(json.dumps(items))
    assert not import_sources(engine, [str(path)]).rejected
    with session_scope(engine) as session:
        story = session.scalar(sa.select(Story))
        for value in (story.summary_html, story.summary_text, story.source):
            assert not [ch for ch in value if ch in BIDI], value
        assert story.source == "Wire"
