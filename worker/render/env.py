"""Jinja2 environments: autoescaped HTML, plain text, both StrictUndefined."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, Template, select_autoescape


@cache
def _environment(templates_dir: Path, html: bool) -> Environment:
    return Environment(
        loader=FileSystemLoader(str(templates_dir)),
        autoescape=select_autoescape(["html"], default=True) if html else False,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def get_template(templates_dir: Path, name: str) -> Template:
    """`weekly_digest/body.html` gets the autoescaping environment, `.txt` the plain one."""
    return _environment(Path(templates_dir).resolve(), name.endswith(".html")).get_template(name)
