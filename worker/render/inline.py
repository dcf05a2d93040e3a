"""The one place CSS is inlined."""

from __future__ import annotations

import logging
from collections import Counter

import premailer

# How many times the inliner ran in this process: tests and benchmarks check
# it equals the number of distinct region sets, never the number of recipients.
CALLS: Counter[str] = Counter()


def inline_css(html: str, *, inliner: str = "premailer") -> str:
    """Inline the <style> rules into style attributes, keeping @media rules.

    premailer (the default): allow_network=False, so a <link rel=stylesheet> is
    never fetched; strip_important=False, as the mobile and dark-mode rules need
    !important; keep_style_tags=True, as media queries only work from a <style>
    block. "css-inline" (NEWSLETTER_CSS_INLINER) does the same in Rust, about 40
    times faster on this digest, with remote stylesheets off.
    """
    CALLS["inline_css"] += 1
    if inliner == "css-inline":
        import css_inline

        return css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False).inline(html)
    return premailer.Premailer(
        html,
        allow_network=False,
        keep_style_tags=True,
        strip_important=False,
        remove_classes=False,
        disable_validation=True,
        cssutils_logging_level=logging.CRITICAL,
    ).transform()
