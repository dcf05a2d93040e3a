"""Readers' time zones: IANA names checked with zoneinfo, and each region's main zone.

The tables are the IANA tz database's own, from the `tzdata` package (the same data
zoneinfo falls back to), so they do not depend on what the host has in /usr/share.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

# The longest IANA name is 32 characters; the column holds 64. Longer text is refused unread.
MAX_ZONE = 64
_NAME = re.compile(r"^[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*$")

# zone.tab lists a country's zones west to east (or north to south) before it lists the
# most populous first, so its first row is sometimes a small place (Kaliningrad for RU,
# Lord Howe Island for AU, Simferopol for UA). Where that happens the capital's zone is
# the main one; tests check each of these is still one of the country's zones in the table.
_CAPITAL_ZONES = {
    "AU": "Australia/Sydney",
    "BR": "America/Sao_Paulo",
    "CA": "America/Toronto",
    "FM": "Pacific/Pohnpei",
    "RU": "Europe/Moscow",
    "UA": "Europe/Kyiv",
    "UZ": "Asia/Tashkent",
}


class ZoneError(ValueError):
    """Not an IANA time zone name; the message is the reason, fit to show a reader."""


@cache
def _canonical() -> dict[str, str]:
    """casefolded name -> the name as IANA spells it."""
    return {name.casefold(): name for name in available_timezones()}


def normalise_zone(raw: str) -> str:
    """'europe/berlin ' -> 'Europe/Berlin'; ZoneError for anything zoneinfo does not know.

    Case is forgiven (a form or CSV cell typed by hand), nothing else: a path, a POSIX TZ
    string ('CET-1') or a file name outside the database is refused before zoneinfo sees it.
    """
    value = raw.strip()
    if not value:
        raise ZoneError("no time zone")
    if len(value) > MAX_ZONE or not _NAME.match(value):
        raise ZoneError(f"unknown time zone {value[:MAX_ZONE]!r} (an IANA name such as Europe/Berlin)")
    name = _canonical().get(value.casefold())
    if name is None:
        raise ZoneError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ZoneError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
    return name


def optional_zone(raw: str | None) -> str | None:
    """An empty field is no zone (the region's, then NEWSLETTER_TIMEZONE)."""
    if raw is None or not raw.strip():
        return None
    return normalise_zone(raw)


@cache
def country_zones() -> dict[str, tuple[str, ...]]:
    """ISO 3166 alpha-2 -> its zones in zone.tab's order."""
    text = resources.files("tzdata.zoneinfo").joinpath("zone.tab").read_text(encoding="utf-8")
    zones: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            code, _, name = line.split("\t")[:3]
            zones.setdefault(code, []).append(name)
    return {code: tuple(names) for code, names in zones.items()}


def region_zone(code: str, overrides: Mapping[str, str] | None = None) -> str | None:
    """A region's main zone: the configured one, else its only zone, else its capital's;
    None for a code the tables do not place."""
    if overrides and code in overrides:
        return overrides[code]
    zones = country_zones().get(code)
    if not zones:
        return None
    return _CAPITAL_ZONES.get(code, zones[0])


@cache
def zone_choices() -> tuple[str, ...]:
    """The zones a reader is offered: every one a country uses today, sorted."""
    return tuple(sorted({name for names in country_zones().values() for name in names} | {"UTC"}))
