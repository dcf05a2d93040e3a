"""Checks of single setting values (addresses, colours, host names), pure functions."""

from __future__ import annotations

import ipaddress
import re
from email.headerregistry import Address, HeaderRegistry
from functools import lru_cache

from worker.text import contains_control

URL_CHARS = re.compile(r"[!-~]+")
# WCAG 2 AA contrast for normal text, against the header's white text.
MIN_CONTRAST = 4.5
MAILTO = re.compile(r"[A-Za-z0-9.!#$%&'*+/^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
LIST_ID = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+")
# A fully qualified host name: two or more letter-digit-hyphen labels, the last not all digits.
FQDN = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
                  r"(?![0-9]+$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
RATE = re.compile(r"\d+ *(?:/|per) *(?:\d+ *)?(?:second|minute|hour|day|month|year)s?", re.IGNORECASE)
ORIGIN = re.compile(r"https?://[A-Za-z0-9.-]+(:\d{1,5})?")


@lru_cache(maxsize=16)
def parsed_address(value: str) -> Address:
    return parse_address(value)


def _luminance(color: str) -> float:
    """WCAG 2 relative luminance of a #rrggbb colour (sRGB)."""
    channels = [int(color[i:i + 2], 16) / 255 for i in (1, 3, 5)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast_ratio(first: str, second: str) -> float:
    """WCAG 2 contrast ratio of two #rrggbb colours, 1 to 21."""
    light, dark = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def parse_address(value: str) -> Address:
    """Parse `Name <user@domain>` or `user@domain` into an Address, strictly."""
    if contains_control(value):
        raise ValueError("must not contain control characters or line breaks")
    header = HeaderRegistry()("From", value)
    if len(header.addresses) != 1 or header.defects:
        raise ValueError(f"must be one address such as 'News <news@example.org>', got {value!r}")
    address = header.addresses[0]
    if not address.username or not address.domain:
        raise ValueError(f"must be one address such as 'News <news@example.org>', got {value!r}")
    # The parser decodes encoded-words: check what it decoded to, which is what gets written.
    if any(contains_control(part) for part in (address.display_name, address.username, address.domain)):
        raise ValueError("must not contain control characters or line breaks, encoded or not")
    return address


def is_ehlo_name(value: str) -> bool:
    """A fully qualified host name, or an address literal of RFC 5321 4.1.3."""
    if FQDN.fullmatch(value):
        return True
    if not (value.startswith("[") and value.endswith("]")):
        return False
    literal = value[1:-1]
    try:
        if literal[:5].lower() == "ipv6:":
            return ipaddress.ip_address(literal[5:]).version == 6
        return ipaddress.ip_address(literal).version == 4 and literal.count(".") == 3
    except ValueError:
        return False
