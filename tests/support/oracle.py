"""The oracle every fault test ends with (issue: nothing lost, nothing sent twice)."""

from __future__ import annotations

import json
from collections.abc import Collection

from tests.support.data import delivery_rows


def assert_oracle(engine, key, server, run_cli, env, *, expect_sent: Collection[str] | int,
                  allowed_unknown: int = 0):
    """Nothing lost, nothing sent twice, and exactly the expected deliveries happened.

    `expect_sent` is mandatory: without it an edition where nothing arrived (every row
    `failed`, `skipped` or missing) would pass. Give the exact set of addresses that must
    have been delivered: each must end `sent` with exactly one message at the server, or
    `unknown` (the ambiguous window: zero or one message, at most `allowed_unknown` such
    rows), and nobody else may have received anything. An int only fixes how many rows
    ended `sent` or `unknown` (for callers that cannot name the addresses).
    """
    rows = delivery_rows(engine, key)
    got = server.by_recipient()
    duplicates = {e: n for e, n in got.items() if n > 1}
    assert not duplicates, f"sent twice: {duplicates}"
    sent = {e for e, d in rows.items() if d.state == "sent"}
    unknown = {e for e, d in rows.items() if d.state == "unknown"}
    # What the server took is what the ledger says was sent, plus at most the
    # ambiguous rows (accepted, but the worker died before recording it).
    assert sent <= set(got), f"ledger says sent, server never got: {sent - set(got)}"
    assert set(got) - sent <= unknown, f"server got, ledger does not know: {set(got) - sent - unknown}"
    open_rows = {e: d.state for e, d in rows.items() if d.state in ("pending", "sending")}
    assert not open_rows, f"left open: {open_rows}"
    assert len(unknown) <= allowed_unknown, f"unprovoked unknown rows: {unknown}"
    status = json.loads(run_cli("status", key, "--json", env=env).out)
    assert {u["email"] for u in status["unknown"]} == unknown
    assert status["counts"]["sent"] == len(sent)
    delivered = sent | unknown
    if isinstance(expect_sent, int):
        assert len(delivered) == expect_sent, (
            f"{len(delivered)} rows ended sent or unknown, expected {expect_sent}: "
            f"{ {e: d.state for e, d in rows.items() if e not in delivered} }")
    else:
        expected = set(expect_sent)
        missing = {e: rows[e].state if e in rows else "no row" for e in expected - delivered}
        assert not missing, f"expected but not delivered: {missing}"
        assert delivered <= expected, f"delivered but not expected: {delivered - expected}"
        assert set(got) <= expected, f"the server got mail for unexpected recipients: {set(got) - expected}"
    return rows, status
