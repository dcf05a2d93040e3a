"""The current instant, spelt once: every module that needs "now" asks here, and a test
that freezes the clock has one name to look for."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    """The current instant, timezone-aware, in UTC."""
    return datetime.now(UTC)
