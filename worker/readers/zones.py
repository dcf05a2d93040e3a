"""Which zone a reader's mail is timed by, for one reader on screen.

The rule is delivery/local_time.py's (the reader's own zone, else their first region's
main zone, else NEWSLETTER_TIMEZONE), which planning applies to every reader at once in
SQL; IANA names and regions' main zones are worker/zones.py.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker.zones import ZoneError, normalise_zone, region_zone


def reader_zone(stored: str | None, regions: list[str], *, region_zones: Mapping[str, str],
                default: str) -> tuple[str, str]:
    """-> (the zone a reader's edition is timed by, where it comes from): 'own', 'region'
    or 'default'. The same rule as the planning CASE, for one reader on screen."""
    if stored:
        try:
            return normalise_zone(stored), "own"
        except ZoneError:
            pass
    zone = region_zone(regions[0], region_zones) if regions else None
    return (zone, "region") if zone else (default, "default")
