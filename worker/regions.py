"""Region codes: ISO 3166-1 alpha-2, named by pycountry unless config overrides."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from functools import cache

import pycountry

_SPLIT = re.compile(r"[\s;,]+")
# Where pycountry has no common name and its name is the formal one ("Russian Federation",
# "Palestine, State of"): the short name news sites use. NEWSLETTER_REGION_NAMES overrides.
_SHORT_NAMES = {
    "BN": "Brunei", "CD": "DR Congo", "FK": "Falkland Islands", "FM": "Micronesia", "PS": "Palestine",
    "RU": "Russia", "VA": "Vatican City", "VG": "British Virgin Islands", "VI": "US Virgin Islands",
}


class RegionError(ValueError):
    """An unknown or malformed region code."""


@cache
def _known() -> frozenset[str]:
    return frozenset(c.alpha_2 for c in pycountry.countries)


def normalise_region(code: str) -> str:
    """'ru ' -> 'RU'; RegionError for anything not ISO 3166-1 alpha-2."""
    value = code.strip().upper()
    if value not in _known():
        raise RegionError(f"unknown region code {code.strip()!r}")
    return value


def parse_regions(text: str | Iterable[str]) -> list[str]:
    """Codes separated by spaces, ';' or ',' (or a list) -> ordered, de-duplicated codes."""
    parts = _SPLIT.split(text) if isinstance(text, str) else list(text)
    seen: dict[str, None] = {}
    for part in parts:
        if not isinstance(part, str):
            raise RegionError(f"region code must be text, got {part!r}")
        if part.strip():
            seen.setdefault(normalise_region(part), None)
    return list(seen)


def region_name(code: str, overrides: Mapping[str, str] | None = None) -> str:
    """Display name: config override, else the common short name ("Taiwan", "Russia",
    not "Taiwan, Province of China" or "Russian Federation")."""
    if overrides and code in overrides:
        return overrides[code]
    country = pycountry.countries.get(alpha_2=code)
    if country is None:
        return code
    return _SHORT_NAMES.get(code) or getattr(country, "common_name", None) or country.name
