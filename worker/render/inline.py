"""The one place CSS is inlined."""

from __future__ import annotations

import logging
from collections import Counter

import premailer

# How many times the inliner ran in this process: tests and benchmarks check
# it equals the number of distinct region sets, never the number of recipients.
CALLS: Counter[str] = Counter()


def inline_css(html: str) -> str:
    """Inline the <style> rules into style attributes, keeping @media rules.

    allow_network=False: a <link rel=stylesheet> is never fetched.
    strip_important=False: the mobile and dark-mode rules need !important.
    keep_style_tags=True: media queries only work from a <style> block.
    """
    CALLS["inline_css"] += 1
    return premailer.Premailer(
        html,
        allow_network=False,
        keep_style_tags=True,
        strip_important=False,
        remove_classes=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
    ).transform()
