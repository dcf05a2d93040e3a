"""The one place CSS is inlined."""

from __future__ import annotations

import functools
import logging
import threading

import css_inline
import premailer

from worker import metrics

PREMAILER_OPTIONS = dict(
    allow_network=False,
    keep_style_tags=True,
    strip_important=False,
    remove_classes=False,
    disable_validation=True,
    cssutils_logging_level=logging.CRITICAL,
)


def inline_css(html: str, *, inliner: str = "premailer") -> str:
    """Inline the <style> rules of a whole document into style attributes, keeping @media rules.

    premailer (the default): allow_network=False, so a <link rel=stylesheet> is
    never fetched; strip_important=False, as the mobile and dark-mode rules need
    !important; keep_style_tags=True, as media queries only work from a <style>
    block. "css-inline" (NEWSLETTER_CSS_INLINER) does the same in Rust, about 40
    times faster on this digest, with remote stylesheets off.
    """
    # newsletter_variants_inlined_total: documents, one per region set (and per trim of
    # one), never one per recipient; tests and the benchmark hold it to that.
    metrics.count_inlined(inliner)
    return run_inliner(html, inliner=inliner)


def run_inliner(html: str, *, inliner: str) -> str:
    """One call into the inliner, of a whole document or of the pieces sections.py
    assembles one from; counted as such (newsletter_inliner_calls_total)."""
    metrics.count_inliner_call(inliner)
    if inliner == "css-inline":
        return css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False).inline(html)
    return _Premailer(html, **PREMAILER_OPTIONS).transform()


class _Premailer(premailer.Premailer):
    """premailer with its stylesheet rules kept between documents.

    premailer caches the parsed stylesheet but then re-serialises every
    declaration of it through cssutils on each call: about 70 % of its time on
    this digest, although every variant carries the same stylesheet. The rules
    depend only on the CSS text, its position and the options above, which are
    fixed, so they are computed once per process.

    The adapter relies on premailer 3.10's private `_parse_style_rules(css_body,
    ruleset_index)`, called from `transform()`; tests/test_library_contracts.py fails
    loudly if that changes, and tests/test_render.py holds the output to premailer's own.
    """

    def _parse_style_rules(self, css_body, ruleset_index):
        rules, leftover = _style_rules(css_body, ruleset_index)
        return list(rules), list(leftover)


_cssutils_lock = threading.Lock()  # cssutils is not thread-safe; delivery lanes are threads


@functools.lru_cache(maxsize=32)
def _style_rules(css_body, ruleset_index):
    with _cssutils_lock:
        rules, leftover = premailer.Premailer("", **PREMAILER_OPTIONS)._parse_style_rules(css_body, ruleset_index)
    return tuple(rules), tuple(leftover)
