"""Jinja2 environment, inline_css(), personalisation, MIME."""

from worker.render.digest import RenderedVariant, render_variant
from worker.render.inline import inline_css
from worker.render.personalise import Recipient, personalise

__all__ = ["Recipient", "RenderedVariant", "inline_css", "personalise", "render_variant"]
