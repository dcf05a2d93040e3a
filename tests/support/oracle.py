"""The oracle every fault test ends with (issue: nothing lost, nothing sent twice)."""

from __future__ import annotations

import json

from tests.support.data import delivery_rows


def assert_oracle(engine, key, server, run_cli, env, *, allowed_unknown: int = 0, expect_sent: int | None = None):
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
    if expect_sent is not None:
        assert len(sent) + len(unknown & set(got)) == expect_sent
    return rows, status
