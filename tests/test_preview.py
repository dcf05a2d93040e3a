"""`newsletter preview` through the real render path, and the digest in a real browser."""

import os
import shutil
import subprocess
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest

from tests.conftest import IN_CI, REPO

SCREENSHOTS = Path(os.environ.get("NEWSLETTER_TEST_ARTIFACTS", REPO / "artifacts")) / "screenshots"


@pytest.fixture
def loaded(run_cli):
    from tests.conftest import EXAMPLES

    assert run_cli("db", "upgrade").code == 0
    assert run_cli("stories", "import", str(EXAMPLES / "stories.json")).code == 0
    assert run_cli("subscribers", "import", str(EXAMPLES / "subscribers.csv")).code == 0
    return run_cli


def test_preview_writes_three_files_and_sends_nothing(loaded, tmp_path):
    result = loaded("preview", "--week", "2025-W05", "--regions", "RU,UA", "--out", str(tmp_path / "p"))
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == ("2025-W05: RU UA, 6 stories, subject: "
                        "Drone Swarm Breaches Russian Air Defense, Sparks Refinery Explosion")
    assert lines[1:4] == [str(tmp_path / "p" / f"digest.{ext}") for ext in ("html", "txt", "eml")]
    assert lines[4].startswith("HTML size: ") and lines[4].endswith("KB of the 102 KB at which Gmail clips")
    msg = BytesParser(policy=policy.default).parsebytes((tmp_path / "p" / "digest.eml").read_bytes())
    assert msg["To"] == "Sample Reader <reader@example.org>"
    assert (tmp_path / "p" / "digest.txt").read_text().startswith("Hello Sample Reader,")
    assert not (tmp_path / "var" / "outbox").exists()


def test_preview_for_a_subscriber_uses_their_regions_and_name(loaded, tmp_path):
    result = loaded("preview", "--week", "2025-W05", "--email", "ANNA.PETROVA@example.org",
                    "--out", str(tmp_path / "p"))
    assert result.code == 0, result.err
    assert result.out.startswith("2025-W05: RU UA, ")
    assert (tmp_path / "p" / "digest.txt").read_text().startswith("Hello Anna Petrova,")


@pytest.mark.parametrize(("args", "code", "err"), [
    (["--week", "2025-W05", "--regions", "JP"], 1,
     "error: no stories for JP in 2025-W05: such subscribers are skipped (no-stories)\n"),
    (["--week", "2025-W77", "--regions", "RU"], 2,
     "error: --week: 2025-W77 does not exist: 2025 has no ISO week 77\n"),
    (["--week", "2025-W05", "--regions", "RU,XX"], 2, "error: --regions: unknown region code 'XX'\n"),
    (["--week", "2025-W05", "--email", "nobody@example.org"], 2,
     "error: --email: no subscriber 'nobody@example.org'\n"),
    (["--week", "2025-W05", "--regions", "RU", "--email", "a@example.org"], 2,
     "error: give --regions or --email, not both\n"),
])
def test_preview_errors_are_one_line(loaded, args, code, err):
    result = loaded("preview", *args)
    assert (result.code, result.err) == (code, err)


def test_an_oversized_digest_is_shortened_under_the_clip(loaded, tmp_path):
    result = loaded("preview", "--week", "2025-W05", "--regions", "RU,UA,DE,FR,GB,US,CN,PL",
                    "--out", str(tmp_path / "p"), env={"NEWSLETTER_STORIES_PER_REGION": "50",
                                                       "NEWSLETTER_POSTAL_ADDRESS": "x" * 60_000})
    assert result.code == 0, result.err
    size = result.out.splitlines()[4]
    assert size.startswith("HTML size: ") and size.endswith("KB of the 102 KB at which Gmail clips")
    assert float(size.split()[2]) <= 96
    assert "…\n" in (tmp_path / "p" / "digest.txt").read_text()  # summaries cut at a word


def test_a_digest_that_cannot_be_shortened_enough_is_an_error(loaded, tmp_path):
    result = loaded("preview", "--week", "2025-W05", "--regions", "RU,UA,DE,FR,GB,US,CN,PL",
                    "--out", str(tmp_path / "p"), env={"NEWSLETTER_POSTAL_ADDRESS": "x" * 120_000})
    assert result.code == 2
    assert result.err.startswith("error: ") and "even its shortest form is over 96 KB of HTML" in result.err
    assert len(result.err.strip().splitlines()) == 1


def _chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        if IN_CI:
            pytest.fail("chromium missing: .ci/tools installs it")
        pytest.skip("chromium not installed (apt-get install chromium)")
    return found


def _headless(binary, profile, *args):
    return subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", f"--user-data-dir={profile}", *args],
        capture_output=True, timeout=90, check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_digest_renders_in_a_real_browser_at_600_and_375_px(loaded, tmp_path):
    from PIL import Image

    binary = _chromium()
    assert loaded("preview", "--week", "2025-W05", "--regions", "RU,UA,DE", "--out", str(tmp_path / "p")).code == 0
    page = (tmp_path / "p" / "digest.html").resolve().as_uri()
    dom = _headless(binary, tmp_path / "profile-dom", "--dump-dom", page)
    assert dom.returncode == 0, dom.stderr[-500:]
    text = dom.stdout.decode()
    for title in ("Drone Swarm Breaches Russian Air Defense", "Overnight Air-Raid Alerts", "Russia"):
        assert title in text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for width in (600, 375):
        shot = SCREENSHOTS / f"digest-{width}.png"
        shot.unlink(missing_ok=True)
        run = _headless(binary, tmp_path / f"profile-{width}", f"--window-size={width},2400",
                        f"--screenshot={shot}", page)
        assert run.returncode == 0 and shot.exists(), run.stderr[-500:]
        image = Image.open(shot).convert("RGB")
        assert image.size == (width, 2400)
        colours = image.getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50  # text, links, the brand header: not a blank page
        brand = image.getpixel((5, 5))
        assert brand[0] > 150 and brand[1] < 80  # the red header bar rendered
