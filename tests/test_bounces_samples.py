"""Real bounce and complaint mails (tests/samples/bounces, from sisimai/set-of-emails):
each reads as what it is, and matches the delivery it is about."""

from __future__ import annotations

import json
import re
from pathlib import Path

import flufl.bounce
import pytest
from flufl.bounce import _scan

from tests.bounce_support import NOW, RETURN_PATH, bounce_events, delivery, sent_editions, subscriber
from worker.bounces.apply import Applied, apply_report
from worker.bounces.reports import read_report

SAMPLES = Path(__file__).parent / "samples" / "bounces"
EXPECTED = json.loads((SAMPLES / "expected.json").read_text())
KINDS = {"permanent": "bounced", "transient": "active", "complaint": "complained", "sender": "active"}


def _tagged(data: bytes, address: str, name: str) -> bytes:
    """The sample as it would reach our bounce mailbox: our VERP address delivered to (and,
    for a complaint, as the original envelope sender, where FBLs quote it)."""
    if name.startswith("arf-"):
        data = re.sub(rb"(?im)^(Feedback-Type: *\w+)", rb"\1\nOriginal-Mail-From: <" + address.encode() + b">",
                      data, count=1)
    return b"Delivered-To: " + address.encode() + b"\n" + data


def test_every_sample_is_listed_and_the_set_is_representative():
    files = sorted(p.name for p in SAMPLES.glob("*.eml"))
    assert files == sorted(EXPECTED)
    kinds = [e["kind"] for e in EXPECTED.values()]
    assert kinds.count("complaint") >= 4 and kinds.count("transient") >= 3 and kinds.count("permanent") >= 10
    assert kinds.count("sender") >= 5
    for mta in ("postfix", "exim", "sendmail", "exchange", "gmail", "qmail", "yahoo", "office365", "aol"):
        assert any(mta in f for f in files), mta


def test_flufl_bounce_keeps_the_api_we_rely_on():
    assert flufl.bounce.__version__.startswith("6.")
    assert callable(flufl.bounce.all_failures) and callable(flufl.bounce.scan_message)
    assert all(hasattr(d, "process") for d in _scan._DETECTORS) and len(_scan._DETECTORS) > 10


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_sample_reads_as_expected(name):
    expected = EXPECTED[name]
    reading = read_report((SAMPLES / name).read_bytes(), return_path=RETURN_PATH, message_id_domain="localhost")
    if expected["kind"] == "ignored":
        assert reading.reports == [] and reading.ignored
        return
    assert {r.kind.value for r in reading.reports} <= {expected["kind"], "permanent", "transient"}
    assert reading.reports[0].kind.value == expected["kind"]
    assert sorted({r.recipient for r in reading.reports if r.recipient}) == expected["recipients"]
    assert sorted({r.code for r in reading.reports if r.code}) == expected["codes"]
    assert all(r.delivery_id is None for r in reading.reports)  # no tag of ours in the original


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e["kind"] != "ignored"))
def test_each_sample_matches_the_tagged_delivery(engine, name):
    """With our VERP address on it, the sample changes exactly the delivery its tag names,
    whatever address it reports (the samples' addresses are none of ours)."""
    ids = sent_editions(engine, ["reader@example.org", "other@example.org"], editions=2)
    target = ids[(1, "reader@example.org")]
    data = _tagged((SAMPLES / name).read_bytes(), RETURN_PATH.for_delivery(target), name)
    reading = read_report(data, return_path=RETURN_PATH, message_id_domain="localhost")
    assert reading.reports and all(r.delivery_id == target for r in reading.reports)
    results = {apply_report(engine, r, transient_limit=5, now=NOW) for r in reading.reports}
    assert Applied.APPLIED in results
    kind = EXPECTED[name]["kind"]
    assert subscriber(engine, "reader@example.org").status == KINDS[kind]
    assert delivery(engine, target).state == ("bounced" if kind == "permanent" else "sent")
    assert subscriber(engine, "other@example.org").status == "active"
    assert {e.delivery_id for e in bounce_events(engine)} == {target}


@pytest.mark.parametrize("name", ["lhost-postfix-06.eml", "lhost-qmail-01.eml", "arf-14.eml"])
def test_without_a_tag_a_sample_naming_only_an_address_changes_nothing(engine, name):
    address = EXPECTED[name]["recipients"][0]
    sent_editions(engine, [address, "other@example.org"], editions=2)
    # VERP off, and the sample quotes no Message-ID of ours: anyone could have written it.
    reading = read_report((SAMPLES / name).read_bytes(), return_path=None, message_id_domain="localhost")
    assert [apply_report(engine, r, transient_limit=5, now=NOW) for r in reading.reports] == [Applied.UNVERIFIED]
    assert bounce_events(engine) == [] and subscriber(engine, address).status == "active"
