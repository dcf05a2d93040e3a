"""The readers' pages as a browser sees them: every step done with plain HTML forms (no
script anywhere), and in headless Chromium at 375 px: screenshots kept as CI artefacts
(artifacts/screenshots/readers-*.png, like the digest's) and basic accessibility checked
in the browser (lang, title, one h1, labels on every field, names on buttons and links,
WCAG AA contrast of every text, in the light and the dark colour scheme)."""

from __future__ import annotations

import json
import re
import threading
from html.parser import HTMLParser

import httpx
import pytest
from werkzeug.datastructures import MultiDict
from werkzeug.serving import make_server

from tests.test_preview import SCREENSHOTS, _chromium, _headless
from tests.test_readers_signup import Readers, for_readers
from worker.tokens import manage_token

ANNA = "anna.petrova@example.org"


class _Forms(HTMLParser):
    """The forms of a page as a browser without scripts reads them."""

    def __init__(self):
        super().__init__()
        self.forms: list[dict] = []
        self._select = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", "get"), "fields": [],
                               "buttons": []})
        elif not self.forms:
            return
        form = self.forms[-1]
        if tag == "input":
            if a.get("type") == "checkbox":
                form["fields"].append((a["name"], a.get("value", "on"), "checked" in a, "checkbox"))
            else:
                form["fields"].append((a.get("name"), a.get("value", ""), True, a.get("type", "text")))
        elif tag == "select":
            self._select = [a["name"], None, None]
        elif tag == "option" and self._select is not None:
            if self._select[1] is None or "selected" in a:
                self._select[1] = a.get("value", "")
        elif tag == "button":
            form["buttons"].append({"name": a.get("name"), "value": a.get("value", ""), "text": "",
                                    "disabled": "disabled" in a})

    def handle_endtag(self, tag):
        if tag == "select" and self._select is not None:
            self.forms[-1]["fields"].append((self._select[0], self._select[1] or "", True, "select"))
            self._select = None

    def handle_data(self, data):
        if self.forms and self.forms[-1]["buttons"] and not self.forms[-1]["buttons"][-1]["text"].endswith(" "):
            self.forms[-1]["buttons"][-1]["text"] += data


def press(client, page, button: str, **typed):
    """Submit the form holding the button whose text starts with `button`, as a browser
    would: its fields with what was typed in (a list ticks checkboxes), and that button."""
    parser = _Forms()
    parser.feed(page.text)
    for form in parser.forms:
        for pressed in form["buttons"]:
            if pressed["text"].strip().startswith(button) and not pressed["disabled"]:
                data: list[tuple[str, str]] = []
                for name, value, on, kind in form["fields"]:
                    if name is None:
                        continue
                    if kind == "checkbox":
                        on = value in typed.get(name, []) if name in typed else on
                    elif name in typed:
                        value = typed[name]
                    if on:
                        data.append((name, value))
                if pressed["name"]:
                    data.append((pressed["name"], pressed["value"]))
                assert form["method"] == "post"
                response = client.post(form["action"], data=MultiDict(data))
                return client.get(response.headers["Location"]) if response.status_code == 303 else response
    raise AssertionError(f"no button {button!r} on the page")


@pytest.fixture
def readers(sample_engine, settings):
    return Readers(sample_engine, for_readers(settings))


def test_every_step_works_with_plain_forms_and_no_script(readers):
    client = readers.client
    start = client.get("/subscribe")
    sent = press(client, start, "Subscribe", email="new@example.org", regions="UA", name="New Reader")
    assert "Check your inbox" in sent.text
    [mail] = readers.mails()
    link = re.search(r"https://news\.example(/confirm/\S+)", mail.get_body(("plain",)).get_content())[1]
    done = press(client, client.get(link), "Confirm my subscription")
    assert "You are subscribed" in done.text
    manage = client.get(re.search(r'href="(/manage/[^"]+)"', done.text)[1])
    manage = press(client, manage, "Save changes", add="PL", name="Reader")
    assert "Saved" in manage.text and readers.row("new@example.org").regions == "UA PL"
    manage = press(client, manage, "Up")  # the only enabled Up: Poland's
    assert readers.row("new@example.org").regions == "PL UA"
    manage = press(client, manage, "Save changes", remove=["PL"])
    assert readers.row("new@example.org").regions == "UA"
    left = press(client, manage, "Unsubscribe from all")
    assert "You are unsubscribed" in left.text and readers.row("new@example.org").status == "unsubscribed"
    for page in (start, sent, done, manage, left):
        assert "<script" not in page.text.lower() and not re.search(r"<[^>]+\son[a-z]+=", page.text)


@pytest.fixture
def served(readers):
    """The real app over HTTP on 127.0.0.1, for the browser."""
    server = make_server("127.0.0.1", 0, readers.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", readers
    server.shutdown()


# Computed in the browser: every problem found, as JSON in <pre id="a11y-report">.
A11Y = """<script>(function () {
  const problems = [];
  if (!document.documentElement.lang) problems.push("no lang");
  if (!document.title.trim()) problems.push("no title");
  if (document.querySelectorAll("h1").length !== 1) problems.push("not one h1");
  for (const el of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
    const label = el.closest("label") || (el.id && document.querySelector('label[for="' + el.id + '"]'));
    if (!label && !el.getAttribute("aria-label")) problems.push("unlabelled field " + el.name);
  }
  for (const el of document.querySelectorAll("a, button")) {
    if (!el.textContent.trim() && !el.getAttribute("aria-label")) problems.push("nameless " + el.outerHTML.slice(0, 60));
  }
  const rgb = (c) => { const p = c.match(/[\\d.]+/g).map(Number); return {r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1}; };
  const lum = (c) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
                       return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b); };
  const background = (el) => { for (; el; el = el.parentElement) { const c = rgb(getComputedStyle(el).backgroundColor);
                                 if (c.a > 0.5) return c; } return {r: 255, g: 255, b: 255, a: 1}; };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    if (!node.textContent.trim() || el.closest(".visually-hidden, script, style, [disabled]")) continue;
    const style = getComputedStyle(el);
    const a = lum(rgb(style.color)), b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const large = parseFloat(style.fontSize) >= 24 || (parseFloat(style.fontSize) >= 18.66 && parseInt(style.fontWeight) >= 700);
    if (ratio < (large ? 3 : 4.5)) problems.push("contrast " + ratio.toFixed(2) + ": " + node.textContent.trim().slice(0, 40));
  }
  const out = document.createElement("pre");
  out.id = "a11y-report";
  out.textContent = JSON.stringify({dark: matchMedia("(prefers-color-scheme: dark)").matches, problems: problems});
  document.body.appendChild(out);
})();</script>"""


def _a11y(binary, tmp_path, name, html, *, dark):
    page = tmp_path / f"{name}-{'dark' if dark else 'light'}.html"
    page.write_text(html.replace("</body>", A11Y + "</body>"), encoding="utf-8")
    flags = ["--blink-settings=preferredColorScheme=0"] if dark else []
    run = _headless(binary, tmp_path / f"profile-a11y-{name}-{dark}", *flags, "--window-size=375,1200",
                    "--dump-dom", page.as_uri())
    assert run.returncode == 0, run.stderr[-500:]
    report = json.loads(re.search(r'<pre id="a11y-report">(.*?)</pre>', run.stdout.decode(), re.S)[1]
                        .replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
    assert report["dark"] is dark
    return report["problems"]


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_readers_pages_in_a_real_browser_at_375_px(served, tmp_path):
    from PIL import Image

    binary = _chromium()
    base, readers = served
    client = readers.client
    anna = f"/manage/{manage_token('test-secret-key', readers.row(ANNA).id, readers.row(ANNA).link_key)}"
    # Pages a link opens: from the server. Pages a form's answer shows: saved as the app answered.
    sent = press(client, client.get("/subscribe"), "Subscribe", email="new@example.org", regions="UA")
    [mail] = readers.mails()
    confirm = re.search(r"https://news\.example(/confirm/\S+)", mail.get_body(("plain",)).get_content())[1]
    confirm_page = httpx.get(base + confirm).text
    subscribed = press(client, client.get(confirm), "Confirm my subscription")
    invalid = client.get(confirm)
    pages = {
        "subscribe": httpx.get(base + "/subscribe").text,
        "subscribe-errors": client.post("/subscribe", data={"email": "not an address", "regions": ""}).text,
        "check-inbox": sent.text,
        "confirm": confirm_page,
        "confirmed": subscribed.text,
        "link-used": invalid.text,
        "manage": httpx.get(base + anna).text,
        "leave-region": httpx.get(base + anna + "/leave/UA").text,
        "left-region": press(client, client.get(anna + "/leave/UA"), "Stop Ukraine news").text,
    }
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, html in pages.items():
        for dark in (False, True):
            assert _a11y(binary, tmp_path, name, html, dark=dark) == [], (name, dark)
        source = tmp_path / f"{name}.html"
        source.write_text(html, encoding="utf-8")
        shot = SCREENSHOTS / f"readers-{name}-375.png"
        shot.unlink(missing_ok=True)
        # (Headless Chromium takes no screenshot with scripts off; the pages have none, as
        # test_every_step_works_with_plain_forms_and_no_script checks.)
        run = _headless(binary, tmp_path / f"profile-{name}", "--window-size=375,1000", f"--screenshot={shot}",
                        source.as_uri())
        assert run.returncode == 0 and shot.exists(), run.stderr[-500:]
        image = Image.open(shot).convert("RGB")
        assert image.size == (375, 1000)
        assert len(image.getcolors(maxcolors=1 << 20) or []) > 20, name  # text and controls, not a blank page
        assert image.getpixel((5, 5))[0] > 150  # the brand bar across the top
        # Nothing wider than the screen: the right edge is page background, not cut-off content.
        edge = {image.getpixel((374, y)) for y in range(60, 1000, 7)}
        assert len(edge) <= 3, (name, edge)


# The regions offered: NEWSLETTER_REGIONS, else what the site covers (worker/web/offered.py).


def _options(page) -> list[tuple[str, str]]:
    return re.findall(r'<option value="([A-Z]{2})">([^<]*)</option>', page.text)


def _recent_stories(engine, tmp_path, regions, days_ago: int) -> None:
    from datetime import UTC, datetime, timedelta

    from worker.ingest import import_sources

    when = (datetime.now(UTC) - timedelta(days=days_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    items = [{"id": f"{code}-{days_ago}", "url": f"https://news.example/{code}/{days_ago}", "title": f"{code} news",
              "summary": "News.", "regions": [code], "published_at": when, "source": "wire"} for code in regions]
    path = tmp_path / f"stories-{days_ago}.json"
    path.write_text(json.dumps(items))
    assert not import_sources(engine, [str(path)]).rejected


@pytest.fixture
def covering(engine, settings, tmp_path):
    """A site with stories about Russia and Taiwan in the last weeks, France's only older
    than 8 weeks, and a feed set up for Germany."""
    from worker.ingest.sources import add_source

    _recent_stories(engine, tmp_path, ["RU", "TW"], days_ago=10)
    _recent_stories(engine, tmp_path, ["FR"], days_ago=60)
    add_source(engine, "https://feeds.example.de/news.rss", region="DE")
    return Readers(engine, for_readers(settings))


def test_sign_up_offers_the_regions_the_site_covers_under_their_common_names(covering):
    assert _options(covering.client.get("/subscribe")) == [("DE", "Germany"), ("RU", "Russia"), ("TW", "Taiwan")]


def test_newsletter_regions_lists_the_regions_offered_and_region_names_still_override(engine, settings):
    readers = Readers(engine, for_readers(settings, regions=["UA", "KR", "IR", "RU"],
                                          region_names={"RU": "Russia (Russian Federation)"}))
    assert _options(readers.client.get("/subscribe")) == [
        ("IR", "Iran"), ("RU", "Russia (Russian Federation)"), ("KR", "South Korea"), ("UA", "Ukraine")]


@pytest.mark.parametrize("as_json", [False, True])
def test_a_sign_up_for_a_region_not_offered_is_refused_clearly(covering, as_json):
    if as_json:
        refused = covering.client.post("/subscribe", json={"email": "x@example.org", "regions": ["RU", "FR"]})
        assert refused.status_code == 400
        assert refused.json["errors"]["regions"] == ("We do not send news about France (FR): choose among the "
                                                     "regions listed.")
    else:
        refused = covering.subscribe(email="x@example.org", regions="RU,FR")
        assert refused.status_code == 400
        assert "We do not send news about France (FR): choose among the regions listed." in refused.text
    assert covering.row("x@example.org") is None and covering.mails() == []


def test_a_link_asking_for_a_region_not_offered_does_not_preselect_it(covering):
    page = covering.client.get("/subscribe?regions=FR")
    assert 'name="regions" value="FR"' not in page.text and ("RU", "Russia") in _options(page)


def test_manage_offers_the_covered_regions_and_keeps_the_ones_a_reader_follows(covering):
    from tests.support.data import add_subscribers

    [(reader, _email, _regions)] = add_subscribers(covering.engine, 1, sets=[("FR", "RU")])
    token = manage_token(covering.settings.secret_key.get_secret_value(), reader, covering.row("reader0@example.org").link_key)
    page = covering.client.get(f"/manage/{token}")
    assert ">France<" in page.text and ">Russia<" in page.text  # followed, listed in their order
    assert _options(page) == [("DE", "Germany"), ("TW", "Taiwan")]  # to add: offered, not yet followed
    added = press(covering.client, page, "Save", add="PL")
    assert added.status_code == 400 and "We do not send news about Poland (PL)" in added.text
    kept = press(covering.client, page, "Save", add="TW")
    assert covering.row("reader0@example.org").regions == "FR RU TW"
    assert kept.status_code == 200


# View online: the public copy of a sent edition.


@pytest.mark.parametrize("shortened", [False, True])
def test_the_public_copy_carries_no_reader_links_and_offers_a_sign_up(sample_engine, settings, shortened):
    """The archive page's Unsubscribe, Manage, View online and "Stop ... news" links used to
    lead back to the archive page itself; and it said "because you follows ...". """
    from tests.test_web import _send_week, _view_online_link, lengthen_stories

    if shortened:  # mailed cut under Gmail's clip: the page is the whole edition, rendered apart
        lengthen_stories(sample_engine)
    _send_week(sample_engine, settings)
    link = _view_online_link(settings, "anna.petrova@example.org")
    page = Readers(sample_engine, settings).client.get(link)
    assert page.status_code == 200
    links = dict((text.strip(), href) for href, text in re.findall(r'<a href="([^"]*)"[^>]*>([^<]*)</a>', page.text))
    assert not [text for text in links if text.startswith("Stop ") or text in (
        "Manage your regions", "Unsubscribe", "View online")]
    # The archive's list and feeds, never a copy's own page (view online led back to itself).
    assert not [href for href in links.values() if re.search(r"/archive/[^/]+/", href) or "/manage/" in href
                or "/unsubscribe/" in href or "nl-public-" in href]
    assert links["Sign up for Melange News Weekly"] == f"{settings.public_url}/subscribe?regions=RU,UA"
    assert links["Past digests"] == f"{settings.public_url}/archive"
    assert links["Follow Russia (Atom)"] == f"{settings.public_url}/archive/RU.atom"
    assert "You are receiving this" not in page.text and "nl-public-" not in page.text
    assert page.text.count("Melange News, 1 Example Street") == 1  # the rest of the footer stays
    assert "Russia" in page.text and "Hello," in page.text
