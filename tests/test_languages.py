"""Each reader's language: our words from gettext catalogs (en, ru, uk), region names and
dates from CLDR, `lang` on the document, and a variant per (region set, language)."""

import re
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from tests.support.data import outbox_message, send_week
from worker import i18n
from worker.digest import week_window
from worker.preview import build_preview
from worker.readers.subscribers import add_subscriber, import_text, make_input
from worker.store.db import session_scope
from worker.store.models import Subscriber, SubscriberEvent, Variant
from worker.web import create_app

REPO = Path(__file__).resolve().parent.parent
WEEK = "2025-W05"
WEEK_LABEL = WEEK


def _extracted() -> dict[str, tuple[str, ...]]:
    """Every message our sources and templates use, as babel.cfg says where they are."""
    from babel.messages.frontend import parse_mapping_cfg

    with (REPO / "babel.cfg").open() as handle:
        method_map, options_map = parse_mapping_cfg(handle)
    found = {}
    # Every folder but hidden ones: Babel's default also skips `_base`, where the layout is.
    for _file, _line, message, _comments, _context in extract_from_dir(
            REPO, method_map, options_map, directory_filter=lambda path: not Path(path).name.startswith(".")):
        key = message if isinstance(message, str) else message[0]
        found[key] = (message,) if isinstance(message, str) else tuple(message)
    return found


def _catalog(language: str):
    with (i18n.LOCALE_DIR / language / "LC_MESSAGES" / "messages.po").open("rb") as handle:
        return read_po(handle, locale=language)


@pytest.mark.parametrize("language", i18n.LANGUAGES)
def test_every_catalog_translates_every_message_with_its_placeholders_and_plural_forms(language):
    used = _extracted()
    catalog = _catalog(language)
    translated = {(m.id if isinstance(m.id, str) else m.id[0]): m for m in catalog if m.id}
    assert sorted(set(used) - set(translated)) == [], f"{language}: untranslated (run pybabel update)"
    assert sorted(set(translated) - set(used)) == [], f"{language}: messages no source uses any more"
    for key, message in translated.items():
        strings = message.string if isinstance(message.string, tuple) else (message.string,)
        assert all(strings), f"{language}: {key!r} has an empty translation"
        if isinstance(message.id, tuple):
            assert len(strings) == catalog.num_plurals, f"{language}: {key!r} needs {catalog.num_plurals} forms"
        assert not i18n.broken_placeholders(message), f"{language}: {key!r}: {strings}"
        assert "fuzzy" not in message.flags, f"{language}: {key!r} is fuzzy"


def test_a_broken_placeholder_is_caught_by_the_check_and_never_stops_a_send(tmp_path, monkeypatch, caplog):
    from babel.messages.catalog import Message

    assert i18n.broken_placeholders(Message("Hello %(name)s,", "Привет, %(nmae)s!"))
    assert i18n.broken_placeholders(Message("Read more: %(title)s", "Читать: %(title)"))
    assert i18n.broken_placeholders(Message("x", "%s"))
    assert not i18n.broken_placeholders(Message("Hello %(name)s,", "Привет, %(name)s!"))
    # A catalog shipped with such a string: the English is used for it, and said.
    (tmp_path / "ru" / "LC_MESSAGES").mkdir(parents=True)
    text = (i18n.LOCALE_DIR / "ru" / "LC_MESSAGES" / "messages.po").read_text()
    text = text.replace('msgstr "Здравствуйте, %(name)s!"', 'msgstr "Здравствуйте, %(nmae)s!"')
    (tmp_path / "ru" / "LC_MESSAGES" / "messages.po").write_text(text)
    monkeypatch.setattr(i18n, "LOCALE_DIR", tmp_path)
    i18n.translations.cache_clear()
    try:
        _ = i18n.gettext_for("ru")
        assert _("Hello %(name)s,") % {"name": "Иван"} == "Hello Иван,"
        assert _("Hello,") == "Здравствуйте!"
        assert "has placeholders its message has not" in caplog.text
    finally:
        i18n.translations.cache_clear()


@pytest.mark.parametrize(("language", "forms"), [
    ("en", {1: "1 hour.", 2: "2 hours.", 5: "5 hours.", 21: "21 hours."}),
    ("ru", {1: "1 час.", 2: "2 часа.", 5: "5 часов.", 11: "11 часов.", 21: "21 час.", 22: "22 часа."}),
    ("uk", {1: "1 годину.", 3: "3 години.", 5: "5 годин.", 21: "21 годину."}),
])
def test_plural_forms_follow_each_languages_rules(language, forms):
    ngettext = i18n.ngettext_for(language)
    for n, expected in forms.items():
        said = ngettext("The link works for %(num)d hour.", "The link works for %(num)d hours.", n) % {"num": n}
        assert said.endswith(expected), (n, said)


@pytest.mark.parametrize(("tag", "language"), [("ru", "ru"), ("ru-RU", "ru"), ("RU_ru", "ru"), ("uk-UA", "uk"),
                                               ("en-GB", "en"), (" en ", "en")])
def test_bcp47_tags_are_read_to_a_shipped_language(tag, language):
    assert i18n.language_of(tag) == language


@pytest.mark.parametrize("tag", ["de", "", "x", "ru/../../etc", "r u", "ru-" + "x" * 40, "🇷🇺", "ru\x00"])
def test_a_language_we_do_not_ship_or_garbage_is_refused(tag):
    with pytest.raises(i18n.LanguageError):
        i18n.language_of(tag)


def test_accept_language_is_bounded_and_garbage_is_ignored():
    assert i18n.from_accept_language("de-DE,de;q=0.9,ru;q=0.8,en;q=0.7") == "ru"
    assert i18n.from_accept_language("en;q=0.5, uk-UA") == "uk"
    assert i18n.from_accept_language("ru;q=0, en") == "en"
    assert i18n.from_accept_language("de, fr") is None
    assert i18n.from_accept_language(",".join(["de"] * 1000 + ["ru"])) is None  # past the first entries
    assert i18n.from_accept_language("\x00\xff;;;q=abc,,,") is None
    assert i18n.from_accept_language("x" * 100_000) is None


def test_names_and_dates_come_from_cldr_and_an_override_per_language_wins():
    assert i18n.region_name("RU", "ru") == "Россия" and i18n.region_name("UA", "uk") == "Україна"
    assert i18n.region_name("RU", "en") == "Russia"
    from worker.settings import Settings

    overrides = Settings(region_names='{"TW": "Taiwan (ROC)", "RU:tw": "Тайвань (КР)"}').region_names
    assert overrides == {"TW": "Taiwan (ROC)", "ru:TW": "Тайвань (КР)"}
    assert i18n.region_name("TW", "ru", overrides) == "Тайвань (КР)"
    assert i18n.region_name("TW", "en", overrides) == "Taiwan (ROC)"
    assert i18n.region_name("TW", "uk", overrides) == "Тайвань"
    first, last = datetime(2025, 1, 27).date(), datetime(2025, 2, 2).date()
    assert i18n.date_range(first, last, "en") == "27 Jan – 2 Feb 2025"
    assert "янв." in i18n.date_range(first, last, "ru") and "лют." in i18n.date_range(first, last, "uk")


def _ivan(engine, language="ru-RU"):
    add_subscriber(engine, make_input("ivan@example.org", "Иван", "RU,UA", language=language))


def test_a_russian_readers_preview_is_russian_in_both_parts(sample_engine, settings):
    _ivan(sample_engine)
    shown = build_preview(sample_engine, settings, window=week_window(WEEK, settings.tz), email="ivan@example.org")
    html, text = shown.composed.digest.html, shown.composed.digest.text
    assert re.search(r'<html lang="ru"', html)
    for part in (html, text):
        assert "Здравствуйте, Иван!" in part
        assert "Новости недели — Россия и Украина: 6 материалов." in part
        assert "Россия" in part and "Украина" in part and "Russia and Ukraine" not in part
        assert "30 янв." in part  # Babel's date; "2025 г." follows, with a no-break space
        assert "Отписаться от новостей — Россия" in part
        assert "Hello" not in part and "Stop Russia news" not in part and "Unsubscribe" not in part
    assert "Настроить регионы" in text and "Открыть в браузере" in text
    assert "Читать дальше" in html


def test_an_english_reader_keeps_english(sample_engine, settings):
    shown = build_preview(sample_engine, settings, window=week_window(WEEK, settings.tz),
                          email="anna.petrova@example.org")
    assert '<html lang="en"' in shown.composed.digest.html
    assert "Here are this week's 6 stories from Russia and Ukraine." in shown.composed.digest.text
    assert "Здравствуйте" not in shown.composed.digest.text


def test_one_edition_renders_a_region_set_once_per_language_and_each_reader_gets_theirs(sample_engine, settings):
    _ivan(sample_engine)
    add_subscriber(sample_engine, make_input("olena@example.org", None, "RU,UA", language="uk"))
    send_week(sample_engine, settings)
    with session_scope(sample_engine) as session:
        stored = sorted(session.execute(sa.select(Variant.regions, Variant.language)
                                        .where(Variant.regions == "RU UA")).all())
    assert stored == [("RU UA", "en"), ("RU UA", "ru"), ("RU UA", "uk")]
    ivan, olena, anna = (outbox_message(settings, e) for e in ("ivan@example.org", "olena@example.org",
                                                        "anna.petrova@example.org"))
    assert "Здравствуйте, Иван!" in ivan.get_body(("plain",)).get_content()
    assert "Вітаємо!" in olena.get_body(("plain",)).get_content()
    assert "Hello Anna Petrova," in anna.get_body(("plain",)).get_content()
    # View online names the copy's language when it is not the list's own, and shows it.
    ivan_html = ivan.get_body(("html",)).get_content()
    link = re.search(r'https?://[^"]+(/archive/[^"]+)"', ivan_html).group(1)
    assert link == f"/archive/weekly-{WEEK}/RU-UA/ru"
    assert re.search(r'https?://[^"]+(/archive/[^"]+)"', anna.get_body(("html",)).get_content()).group(1) == \
        f"/archive/weekly-{WEEK}/RU-UA"
    page = create_app(settings, sample_engine).test_client().get(link)
    assert page.status_code == 200 and '<html lang="ru"' in page.text and "Здравствуйте!" in page.text
    assert "Иван" not in page.text and "Подписаться на" in page.text


def test_language_from_the_command_line_and_the_csv_with_history(sample_engine, run_cli):
    bad = run_cli("subscribers", "add", "x@example.org", "--regions", "RU", "--language", "de-DE")
    assert bad.code == 2 and "language" in bad.err and "en, ru, uk" in bad.err
    assert run_cli("subscribers", "add", "anna.petrova@example.org", "--regions", "RU,UA",
                   "--language", "uk-UA").code == 0
    report = import_text(sample_engine, "email,name,regions,language\nnew@example.org,,RU,ru-RU\n"
                         "odd@example.org,,UA,tlh\n", where="t.csv", name="t.csv")
    assert report.added == 2 and not report.rejected
    assert report.warnings == [(3, "language: no catalog for 'tlh': this list speaks en, ru, uk; "
                                   "NEWSLETTER_LANGUAGE is used")]
    with session_scope(sample_engine) as session:
        languages = dict(session.execute(sa.select(Subscriber.email, Subscriber.language)).all())
        anna = session.scalar(sa.select(Subscriber.id).where(Subscriber.email == "anna.petrova@example.org"))
        events = session.execute(sa.select(SubscriberEvent.kind, SubscriberEvent.note)
                                 .where(SubscriberEvent.subscriber_id == anna)).all()
    assert languages["new@example.org"] == "ru" and languages["odd@example.org"] is None
    assert languages["anna.petrova@example.org"] == "uk"
    assert ("language-changed", "uk") in events


def test_a_storys_lang_comes_from_its_feed_and_anything_else_is_dropped(engine, settings, tmp_path):
    from worker.ingest import import_sources

    rss = tmp_path / "ru.xml"
    rss.write_text("""<?xml version="1.0" encoding="utf-8"?><rss version="2.0"><channel><title>Лента</title>
<language>ru-RU</language><item><title>Новость из Москвы</title><link>https://news.example/ru/1</link>
<guid>ru-1</guid><category>RU</category><pubDate>Wed, 29 Jan 2025 10:00:00 GMT</pubDate></item></channel></rss>""",
                   encoding="utf-8")
    atom = tmp_path / "uk.xml"
    atom.write_text("""<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom" xml:lang="en">
<title>Mixed</title><id>urn:x</id><updated>2025-01-29T10:00:00Z</updated>
<entry xml:lang="uk"><title>Новина з Києва</title><link href="https://news.example/ua/1"/><id>uk-1</id>
<category term="UA"/><updated>2025-01-29T11:00:00Z</updated></entry>
<entry><title>English from Kyiv</title><link href="https://news.example/ua/2"/><id>uk-2</id>
<category term="UA"/><updated>2025-01-29T12:00:00Z</updated></entry></feed>""", encoding="utf-8")
    json_items = tmp_path / "items.json"
    json_items.write_text('[{"id": "j1", "url": "https://news.example/ru/2", "title": "Hostile", "regions": ["RU"],'
                          ' "published_at": "2025-01-29T09:00:00Z", "language": "ru\\"><script>x</script>"}]')
    report = import_sources(engine, [str(rss), str(atom), str(json_items)])
    assert not report.rejected
    with session_scope(engine) as session:
        from worker.store.models import Story

        languages = dict(session.execute(sa.select(Story.guid, Story.language)).all())
    assert languages == {"ru-1": "ru-RU", "uk-1": "uk", "uk-2": "en", "j1": None}
    shown = build_preview(engine, settings, window=week_window(WEEK, settings.tz), regions=("RU", "UA"))
    html = shown.composed.digest.html
    assert re.search(r'<div class="story"[^>]* lang="ru-RU"', html) and re.search(r'<div class="story"[^>]* lang="uk"',
                                                                                   html)
    assert "<script>" not in html and html.count('lang="') == 1 + 3  # the document's and three stories'


def test_a_russian_sign_up_gets_russian_pages_and_a_russian_confirmationoutbox_message(sample_engine, settings):
    from tests.test_readers_signup import Readers, confirm, for_readers

    readers = Readers(sample_engine, for_readers(settings))
    russian = {"Accept-Language": "ru-RU,ru;q=0.9,en;q=0.5"}
    form = readers.client.get("/subscribe", headers=russian)
    assert '<html lang="ru"' in form.text and "Подписка на «Melange News Weekly»" in form.text
    assert '<option value="ru" lang="ru" selected>Русский</option>' in form.text
    # An English browser gets the English form; the operator's pages are English whatever it says.
    assert "Get Melange News Weekly" in readers.client.get("/subscribe").text
    sent = readers.client.post("/subscribe", data={"email": "ivan@example.org", "regions": "RU,UA",
                                                   "language": "ru"}, headers=russian)
    assert sent.status_code == 200 and '<html lang="ru"' in sent.text and "Проверьте почту" in sent.text
    mail = readers.mails()[-1]
    assert mail["Subject"] == "Подтвердите подписку на «Melange News Weekly»"
    text = mail.get_body(("plain",)).get_content()
    assert "Здравствуйте!" in text and "Россия и Украина" in text and "Ссылка действует 48 часов." in text
    assert '<html lang="ru"' in mail.get_body(("html",)).get_content()
    done = confirm(readers, mail)
    assert done.status_code == 200 and "Вы подписаны" in done.text and '<html lang="ru"' in done.text
    assert readers.row("ivan@example.org").language == "ru"
    # A language we do not ship is a form error, in the page's words; nothing is stored.
    refused = readers.client.post("/subscribe", data={"email": "x@example.org", "regions": "RU", "language": "de"})
    assert refused.status_code == 400 and "no catalog for" in refused.text.lower()
    assert readers.row("x@example.org") is None
    # Accept-Language garbage and floods are ignored: the list's language.
    flood = {"Accept-Language": ",".join(["xx;q=0.9"] * 5000)}
    assert '<html lang="en"' in readers.client.get("/subscribe", headers=flood).text


def test_a_readers_manage_page_is_in_their_language_and_changes_it(sample_engine, settings):
    from tests.test_readers_signup import csrf_of, for_readers
    from worker.tokens import manage_token

    _ivan(sample_engine)
    settings = for_readers(settings)
    client = create_app(settings, sample_engine).test_client()
    with session_scope(sample_engine) as session:
        row = session.scalar(sa.select(Subscriber).where(Subscriber.email == "ivan@example.org"))
        path = f"/manage/{manage_token('test-secret-key', row.id, row.link_key)}"
    page = client.get(path, headers={"Accept-Language": "en"})
    assert '<html lang="ru"' in page.text and "Ваша подписка" in page.text and "Россия" in page.text
    assert '<option value="ru" lang="ru" selected>' in page.text
    leave = client.get(path + "/leave/UA")
    assert "Отписаться от новостей — Украина?" in leave.text
    changed = client.post(path, data={"csrf": csrf_of(page.text), "order": ["RU", "UA"], "name": "Иван",
                                      "timezone": "", "language": "uk", "action": "save"})
    assert changed.status_code == 303
    after = client.get(path)
    assert '<html lang="uk"' in after.text and "Ваша підписка" in after.text
    with session_scope(sample_engine) as session:
        kinds = [(e.kind, e.via, e.note) for e in session.scalars(
            sa.select(SubscriberEvent).where(SubscriberEvent.subscriber_id == row.id))]
    assert ("language-changed", "manage-page", "uk") in kinds
    # The operator's pages stay English, whatever the browser asks for.
    assert '<html lang="en"' in client.get("/operator", headers={"Accept-Language": "ru"},
                                           environ_base={"REMOTE_ADDR": "127.0.0.1"}).text


@pytest.mark.parametrize("inliner", ["premailer", "css-inline"])
def test_each_region_set_and_language_pair_is_inlined_once_and_equals_the_whole_document(inliner, settings):
    from itertools import permutations

    from tests.test_render_sections import WEEK
    from worker import metrics
    from worker.render.cache import VariantRenderer
    from worker.render.sections import inline_whole

    settings = settings.model_copy(update={"css_inliner": inliner})
    renderer = VariantRenderer(settings=settings, window=week_window(WEEK_LABEL, settings.tz),
                               edition_key=f"weekly-{WEEK_LABEL}", load_stories=lambda regions: WEEK)
    sets = [p for k in (1, 2) for p in permutations(("RU", "UA", "DE"), k)]
    before = metrics.sample("newsletter_variants_inlined_total", inliner=inliner)
    rendered = {(regions, language): renderer.variant(regions, language)
                for language in i18n.LANGUAGES for regions in sets}
    for (regions, language), variant in rendered.items():  # asked again, by other lanes: nothing new
        assert renderer.variant(regions, language) is variant
        assert variant.language == language and f'<html lang="{language}"' in variant.html
    assert metrics.sample("newsletter_variants_inlined_total", inliner=inliner) - before == len(i18n.LANGUAGES) * len(sets)
    assert not renderer._sections.fallbacks
    # Assembled from sections cached across languages, each is the document inlined whole.
    from worker.render.digest import build_context
    from worker.render.env import get_template

    for (regions, language), variant in list(rendered.items())[::5]:
        context = build_context(selection=renderer.selection(regions), window=week_window(WEEK_LABEL, settings.tz),
                                edition_key=f"weekly-{WEEK_LABEL}", settings=settings, nonce=variant.nonce,
                                language=language)
        body = get_template(settings.templates_dir, "weekly_digest/body.html", language).render(context)
        assert variant.html == inline_whole(body, nonce=variant.nonce, inliner=inliner)
