"""The public copy of a sent variant ("view online", /archive/...): the edition as mailed,
without a reader in it.

A reader's copy has links only that reader can use (manage, unsubscribe, "Stop <region>
news") and says whom it was sent to. The public copy has nobody's: each paragraph that
holds such a link or the address is dropped, and the footer's links become one sign-up link
for the variant's regions. The paragraphs are found by their values, which are random
per page, so no story can spell one out.
"""

from __future__ import annotations

import html
import re
import secrets
from dataclasses import replace

from worker.render.personalise import Recipient, personalise


def public_copy(rendered, *, signup_url: str, newsletter_name: str) -> str:
    """The HTML of `rendered` (a stored variant) for anyone: no reader's links or address."""
    drop, footer = f"nl-public-{secrets.token_hex(8)}", f"nl-public-{secrets.token_hex(8)}"
    anonymous = Recipient(email=drop, name=None, unsubscribe_url=footer, view_online_url=footer, manage_url=footer,
                          leave_urls=tuple((code, drop) for code in rendered.regions))
    # The whole edition, also when the mailed copy was shortened under Gmail's clip.
    page = personalise(replace(rendered, html=rendered.whole_html), anonymous).html
    link = f'<a href="{html.escape(signup_url)}">Sign up for {html.escape(newsletter_name)}</a>'
    page = _paragraphs(footer).sub(lambda m: f"{m['open']}{link}</p>", page, count=1)
    page = _paragraphs(footer).sub("", page)
    return _paragraphs(drop).sub("", page)


def _paragraphs(value: str) -> re.Pattern[str]:
    """Each <p> (with its attributes, as the inliner left them) whose content holds `value`:
    it cannot reach past its own </p>."""
    inside = r"(?:(?!</p>).)*?"
    return re.compile(rf"(?P<open><p\b[^>]*>){inside}{re.escape(value)}{inside}</p>", re.DOTALL)
