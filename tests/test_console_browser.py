"""The operator console in a real browser (Playwright driving the Chromium .ci/tools
installs): a real web server on loopback, an operator signed in with their own token,
search → a reader's page → unsubscribe → resubscribe, the dashboard, and axe-core's
accessibility rules (labels, contrast AA, names) on every page, light and dark. The pages
are screenshotted at desktop width and at 375 px (artifacts/screenshots/console-*.png;
the copies in docs/screenshots/ are these)."""

import json
import threading

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from tests.test_preview import SCREENSHOTS, _chromium
from worker.operators.accounts import add_operator
from worker.web import create_app

pytestmark = [pytest.mark.slow, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]
READER = "maria.garcia@example.org"
WIDTHS = {"desktop": (1280, 900), "375": (375, 800)}


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {**browser_type_launch_args, "executable_path": _chromium(), "args": ["--no-sandbox"]}


@pytest.fixture
def console(sample_engine, settings):
    """The console served over HTTP on loopback; (base URL, the operator's token)."""
    token = add_operator(sample_engine, "anna")
    server = make_server("127.0.0.1", 0, None, threaded=True)
    base = f"http://127.0.0.1:{server.server_port}"
    server.app = create_app(settings.model_copy(update={"public_url": base}), sample_engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield base, token
    server.shutdown()
    thread.join(5)


@pytest.fixture
def signed_in(browser, console):
    base, token = console
    context = browser.new_context(http_credentials={"username": "anna", "password": token}, base_url=base)
    yield context.new_page()
    context.close()


def _accessible(page, where: str) -> None:
    from axe_playwright_python.sync_playwright import Axe

    found = Axe().run(page, options={"runOnly": ["wcag2a", "wcag2aa"]})
    problems = [(v["id"], [n["target"] for n in v["nodes"]][:3]) for v in found.response["violations"]]
    assert not problems, f"{where}: {json.dumps(problems)}"


def _shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for label, (width, height) in WIDTHS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.screenshot(path=str(SCREENSHOTS / f"console-{name}-{label}.png"), full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0 or label == "desktop", f"{name} scrolls sideways at {width} px by {overflow} px"


def test_the_dashboard_in_a_browser_light_and_dark(signed_in):
    page = signed_in
    answer = page.goto("/operator")
    assert answer.status == 200
    assert page.get_by_role("heading", level=1).count() == 1
    assert page.locator("svg.chart").count() >= 1
    assert page.get_by_text("Signed in as anna").is_visible()
    _accessible(page, "dashboard, light")
    _shoot(page, "dashboard")
    page.emulate_media(color_scheme="dark")
    _accessible(page, "dashboard, dark")
    page.screenshot(path=str(SCREENSHOTS / "console-dashboard-dark.png"), full_page=True)


def test_search_a_reader_unsubscribe_and_resubscribe_in_a_browser(signed_in, sample_engine):
    page = signed_in
    page.goto("/operator")
    page.get_by_role("link", name="Subscribers").click()
    page.get_by_label("Search").fill("garcia")
    page.get_by_label("Search").press("Enter")
    _accessible(page, "subscriber list")
    _shoot(page, "subscribers")
    page.get_by_role("link", name=READER).click()
    assert READER in page.content()
    _accessible(page, "reader page")
    _shoot(page, "reader")
    page.get_by_role("button", name="Unsubscribe").click()
    assert _status(sample_engine) == "unsubscribed"
    page.get_by_label("Reason").fill("asked by phone to come back")
    page.get_by_role("button", name="Resubscribe").click()
    assert _status(sample_engine) == "active"
    page.goto("/operator/audit")
    rows = page.locator("tbody tr").all_inner_texts()
    assert any("anna" in r and "subscriber-unsubscribed" in r for r in rows), rows
    _accessible(page, "audit")


def test_the_console_without_javascript(browser, console, sample_engine):
    base, token = console
    context = browser.new_context(http_credentials={"username": "anna", "password": token}, base_url=base,
                                  java_script_enabled=False)
    page = context.new_page()
    page.goto(f"/operator/subscribers?q={READER}")
    page.get_by_role("link", name=READER).click()
    page.get_by_role("button", name="Unsubscribe").click()
    assert _status(sample_engine) == "unsubscribed", page.inner_text("main")[:2000]
    context.close()


def _status(engine) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT status FROM subscribers WHERE email_key = :k"), {"k": READER}).scalar()


def test_a_readers_own_manage_page_saves_in_a_browser(browser, console, sample_engine, settings):
    """The readers' forms carry the browser's real Origin (Referrer-Policy same-origin):
    under no-referrer Chromium sent `Origin: null` and the origin check refused them."""
    from worker.tokens import manage_token

    base, _ = console
    with sample_engine.connect() as conn:
        reader_id, key = conn.execute(sa.text("SELECT id, link_key FROM subscribers WHERE email_key = :k"),
                                      {"k": READER}).one()
    page = browser.new_page(base_url=base)
    page.goto(f"/manage/{manage_token(settings.secret_key.get_secret_value(), reader_id, key)}")
    page.get_by_role("button", name="Unsubscribe from all").click()
    assert _status(sample_engine) == "unsubscribed", page.inner_text("main")[:500]
    page.close()


def test_an_editions_report_in_a_browser(signed_in, sample_engine):
    from tests.bounce_support import sent_editions

    readers = [r for (r,) in sample_engine.connect().execute(sa.text("SELECT email_key FROM subscribers"))]
    sent_editions(sample_engine, readers, editions=2)
    with sample_engine.begin() as conn:  # one failed row, for the reasons and the retry button
        conn.execute(sa.text("UPDATE deliveries SET state = 'failed', last_code = 552, "
                             "last_reply = '5.2.2 mailbox full', sent_at = NULL WHERE id = 1"))
    page = signed_in
    page.goto("/operator")
    page.get_by_role("link", name="Editions").click()
    page.get_by_role("link", name="weekly-2025-W01").first.click()
    assert page.get_by_role("heading", level=1).inner_text().startswith("weekly-2025-W01")
    assert page.locator("svg.chart").count() == 1 and "mailbox full" in page.content()
    _accessible(page, "edition report")
    _shoot(page, "edition")
    page.get_by_role("button", name="Retry failed").click()
    with sample_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT state FROM deliveries WHERE id = 1")).scalar() == "pending"


def test_change_regions_import_and_purge_in_a_browser(signed_in, sample_engine, tmp_path):
    page = signed_in
    page.goto(f"/operator/subscribers?q={READER}")
    page.get_by_role("link", name=READER).click()
    page.get_by_label("Regions").fill("UA RU")
    page.get_by_role("button", name="Change regions").click()
    with sample_engine.connect() as conn:
        regions = conn.execute(sa.text("SELECT regions FROM subscribers WHERE email_key = :k"), {"k": READER})
        assert regions.scalar() == "UA RU"
    page.get_by_label("Type the address to purge").fill("someone.else@example.org")
    page.get_by_role("button", name="Purge").click()
    assert _status(sample_engine) == "active"  # not the typed address: nothing purged
    page.goto(f"/operator/subscribers/{READER}")
    page.get_by_label("Type the address to purge").fill(READER)
    page.get_by_role("button", name="Purge").click()
    assert _status(sample_engine) is None
    upload = tmp_path / "readers.csv"
    upload.write_text("email,name,regions\nnew.reader@example.org,New,RU\nnot-an-address,X,RU\n")
    page.goto("/operator/subscribers/import")
    page.get_by_label("CSV file").set_input_files(str(upload))
    page.get_by_role("button", name="Import").click()
    text = page.inner_text("main")
    assert "1 added" in text and "line 3" in text, text[:500]
    _accessible(page, "import report")
