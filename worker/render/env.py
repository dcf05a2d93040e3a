"""Jinja2 environments: autoescaped HTML, plain text, both StrictUndefined, one per language
with that language's catalog installed (Jinja2's i18n extension, newstyle: `_()` and
`ngettext()` fill their %(name)s placeholders themselves and escape what they fill in)."""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, pass_environment, select_autoescape
from jinja2.filters import do_wordwrap

from worker.i18n import DEFAULT, translations


@cache
def _environment(templates_dir: Path, html: bool, language: str) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(templates_dir)),
        autoescape=select_autoescape(["html"], default=True) if html else False,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(translations(language), newstyle=True)
    env.filters["wordwrap"] = _wordwrap
    return env


@pass_environment
def _wordwrap(environment: Environment, s: str, *args, **kwargs) -> str:
    """Jinja2's wordwrap, remembered: a story's summary is wrapped the same way in each
    of the region sets it appears in, and textwrap is half the cost of a variant's text part."""
    return _wrapped(environment, s, args, tuple(sorted(kwargs.items())))


@lru_cache(maxsize=4096)
def _wrapped(environment: Environment, s: str, args: tuple, kwargs: tuple) -> str:
    return do_wordwrap(environment, s, *args, **dict(kwargs))


def get_template(templates_dir: Path, name: str, language: str = DEFAULT) -> Template:
    """`weekly_digest/body.html` gets the autoescaping environment, `.txt` the plain one,
    each speaking `language` (worker/i18n.py)."""
    return _environment(Path(templates_dir).resolve(), name.endswith(".html"), language).get_template(name)
