"""The digest fits a phone even in a client that drops <style> (Gmail's app for other
accounts, many webmail clients): measured in Debian's headless Chromium at 375 px with
every <style> element removed, only the inline styles premailer wrote left."""

import json
import re
import shutil
from datetime import UTC, datetime
from html import escape, unescape
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import REPO
from tests.test_preview import SCREENSHOTS, _chromium, _headless
from worker.digest import select_sections, week_window
from worker.digest.queries import fetch_window_stories
from worker.render.compose import Addressee, compose
from worker.render.digest import render_variant
from worker.store.db import session_scope
from worker.store.models import Story

NOW = datetime(2025, 2, 3, 7, tzinfo=UTC)
# Headless Chromium will not make a window narrower than 500 px: the digest is laid out in
# an iframe of the phone's width instead (srcdoc, so the page may read it), and measured
# once everything has loaded; --dump-dom then shows what the script wrote.
_FRAME = """<!DOCTYPE html><html><head><style>body {{ margin: 0 }} iframe {{ border: 0; display: block }}</style>
</head><body><iframe id="f" width="{width}" height="{height}" srcdoc="{page}"></iframe>
<script>
window.addEventListener('load', function () {{
  var frame = document.getElementById('f'), doc = frame.contentDocument;
  var container = doc.querySelector('.container');
  document.documentElement.setAttribute('data-measure', JSON.stringify({{
    scroll: doc.documentElement.scrollWidth, view: frame.contentWindow.innerWidth,
    container: container ? container.getBoundingClientRect().width : -1,
    images: Array.prototype.map.call(doc.images, function (i) {{ return i.getBoundingClientRect().width; }})}}));
}});
</script></body></html>"""


def _digest_html(engine, settings, regions=("RU", "UA", "DE")) -> str:
    window = week_window("2025-W05", settings.tz)
    with session_scope(engine) as session:
        stories = fetch_window_stories(session, window, regions)
    variant = render_variant(selection=select_sections(stories, regions, per_region=5), window=window,
                             edition_key="weekly-2025-W05", settings=settings)
    return compose(variant, Addressee("anna@example.org", "Anna", 1), settings=settings, secret="s",
                   now=NOW).digest.html


def _without_styles(html: str) -> str:
    stripped = re.sub(r"<style\b.*?</style>", "", html, flags=re.DOTALL | re.IGNORECASE)
    assert "<style" not in stripped and 'style="' in stripped
    return stripped


def _framed(tmp_path: Path, html: str, width: int, name: str, height: int = 900) -> Path:
    page = tmp_path / f"{name}.html"
    page.write_text(_FRAME.format(width=width, height=height, page=escape(html, quote=True)), encoding="utf-8")
    return page


def _measure(binary, tmp_path: Path, html: str, width: int, name: str) -> dict:
    page = _framed(tmp_path, html, width, name)
    run = _headless(binary, tmp_path / f"profile-{name}", f"--window-size={max(width, 500) + 20},900",
                    "--dump-dom", page.resolve().as_uri())
    assert run.returncode == 0, run.stderr[-500:]
    found = re.search(r'data-measure="([^"]*)"', run.stdout.decode())
    assert found, run.stdout[-500:]
    return json.loads(unescape(found[1]))


def _old_fixed_layout(tmp_path: Path) -> Path:
    """The templates with the container as it was: a fixed 600 px, fluid only through @media."""
    folder = tmp_path / "templates-fixed"
    shutil.copytree(REPO / "templates" / "email", folder)
    layout, css = folder / "_base" / "layout.html", folder / "_base" / "email.css"
    fluid = 'class="container" width="100%" cellpadding="0" cellspacing="0" border="0" style="width:100%;max-width:600px;"'
    assert fluid in layout.read_text()
    layout.write_text(layout.read_text().replace(fluid, 'class="container" width="600" cellpadding="0" '
                                                        'cellspacing="0" border="0"'))
    assert ".container { width: 100%; max-width: 600px;" in css.read_text()
    css.write_text(css.read_text().replace(".container { width: 100%; max-width: 600px;", ".container { width: 600px;"))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_digest_fits_375_px_with_styles_stripped_where_the_fixed_layout_did_not(sample_engine, settings,
                                                                                      tmp_path):
    binary = _chromium()
    html = _digest_html(sample_engine, settings)
    bare = _without_styles(html)

    narrow = _measure(binary, tmp_path, bare, 375, "nostyle-375")
    assert narrow["view"] == 375
    assert narrow["scroll"] <= 375 and narrow["container"] <= 375, narrow
    # Wide, it still stops at 600 px (max-width in the inline style), styles or not.
    assert _measure(binary, tmp_path, bare, 900, "nostyle-900")["container"] == 600
    assert _measure(binary, tmp_path, html, 900, "styled-900")["container"] == 600
    assert _measure(binary, tmp_path, html, 375, "styled-375")["scroll"] <= 375

    # The measurement catches the layout this replaced: 600 px wide on a 375 px phone.
    old = _digest_html(sample_engine, settings.model_copy(update={"templates_dir": _old_fixed_layout(tmp_path)}))
    before = _measure(binary, tmp_path, _without_styles(old), 375, "fixed-375")
    assert before["scroll"] >= 600 and before["container"] == 600, before

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    shot = SCREENSHOTS / "digest-375-nostyle.png"
    shot.unlink(missing_ok=True)
    page = _framed(tmp_path, bare, 375, "shot", height=2000)
    run = _headless(binary, tmp_path / "profile-shot", "--window-size=500,2000", f"--screenshot={shot}",
                    page.resolve().as_uri())
    assert run.returncode == 0 and shot.exists(), run.stderr[-500:]
    from PIL import Image

    image = Image.open(shot).convert("RGB").crop((0, 0, 375, 2000))
    image.save(shot)
    # The brand header (below the wrapper's top padding) runs to the right edge: the container fills the width.
    right = image.getpixel((370, 40))
    assert right[0] > 150 and right[1] < 80, right


# France, Poland and China each have a story with an image in the sample week.
IMAGE_REGIONS = ("FR", "PL", "CN")
# The image as it was: fluid only by max-width, which a table cell's automatic layout
# ignores when the image is blocked or missing (the width attribute then sizes the box).
_OLD_IMAGE_STYLE = 'style="display:block;max-width:100%;height:auto;'


def _with_images(engine, image_url: str) -> None:
    with session_scope(engine) as session:
        for story in session.scalars(sa.select(Story).where(Story.image_url.is_not(None))):
            story.image_url = image_url


def _old_image_layout(tmp_path: Path) -> Path:
    folder = tmp_path / "templates-old-image"
    shutil.copytree(REPO / "templates" / "email", folder)
    body = folder / "weekly_digest" / "body.html"
    text = body.read_text()
    now = re.search(r'<img class="story-image"[^>]*>', text)[0]
    body.write_text(text.replace(now, re.sub(r'style="[^"]*"', _OLD_IMAGE_STYLE + 'border:0;"', now)))
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("shown", ["blocked", "loaded"])
def test_stories_with_images_fit_375_px_with_styles_stripped(sample_engine, settings, tmp_path, shown):
    """Images blocked (Gmail and most clients until the reader allows them; here an address
    that does not resolve) or loaded (a 1200 px photo, wider than the container)."""
    from PIL import Image

    binary = _chromium()
    if shown == "loaded":
        photo = tmp_path / "photo.png"
        Image.new("RGB", (1200, 675), (30, 90, 160)).save(photo)
        _with_images(sample_engine, photo.resolve().as_uri())
    else:
        _with_images(sample_engine, "https://img.invalid/photo.jpg")
    html = _digest_html(sample_engine, settings, IMAGE_REGIONS)
    assert html.count("<img ") == 3
    bare = _without_styles(html)

    narrow = _measure(binary, tmp_path, bare, 375, f"img-{shown}-375")
    assert narrow["scroll"] <= 375 and narrow["container"] <= 375, narrow
    assert len(narrow["images"]) == 3 and max(narrow["images"]) <= 375 - 2 * 20, narrow
    wide = _measure(binary, tmp_path, bare, 900, f"img-{shown}-900")
    assert wide["container"] == 600 and wide["images"] == [560, 560, 560], wide
    assert _measure(binary, tmp_path, html, 375, f"img-{shown}-styled-375")["scroll"] <= 375

    if shown == "blocked":
        # The measurement catches the image as it was: 600 px wide on a 375 px phone.
        old = _digest_html(sample_engine, settings.model_copy(update={"templates_dir": _old_image_layout(tmp_path)}),
                           IMAGE_REGIONS)
        before = _measure(binary, tmp_path, _without_styles(old), 375, "img-old-375")
        assert before["scroll"] >= 600 and before["container"] == 600, before
