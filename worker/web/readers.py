"""Readers' pages: sign up and confirm (signup.py), manage regions and name, leave one
region or all (manage.py); what both share is here.

Rules (docs/readers.md has them for the news site's developers):

- Everything is plain HTML forms: no page needs JavaScript.
- GET never changes anything (mail scanners follow links); each change is a POST.
- Links carry signed tokens (worker/tokens.py), never an address or a name.
- POST /subscribe may come from the news site's pages: a form post from an allowed
  origin (ours, NEWSLETTER_SITE_URL's, NEWSLETTER_SUBSCRIBE_ORIGINS) or with no Origin at
  all (not a browser), and JSON with CORS for those origins only. Its answer is the same
  whether the address is new, pending, active or gone (no enumeration), and comes before
  any mail is sent (mailer.py). Rate limited per client and overall (ratelimit.py).
- Every other POST (confirm, manage, leave) must come from our own origin when the
  browser says where it comes from, and carries a signed form token (CSRF) bound to the
  subscriber and the form, valid for FORM_MAX_AGE (check_form).
- The one-click unsubscribe (public.py) is RFC 8058's and needs neither.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from flask import Response, request

from worker import i18n
from worker.i18n import DEFAULT
from worker.settings import Settings
from worker.tokens import check_form_token
from worker.web.crosssite import origin_refused
from worker.web.shared import language, problem, web

# A readers' form stays usable this long after the page was shown.
FORM_MAX_AGE = 6 * 3600


@dataclass(frozen=True)
class Region:
    code: str
    name: str


def region_choices(settings: Settings, codes: frozenset[str], spoken: str = DEFAULT) -> tuple[Region, ...]:
    """The regions offered (worker/web/offered.py), by name in `spoken`, for the pages' region lists."""
    return _sorted_regions(tuple(sorted(settings.region_names.items())), codes, spoken)


def choices() -> tuple[Region, ...]:
    """The regions this site offers now, by name."""
    return region_choices(web().settings, web().offered(), language())


def names(codes: Iterable[str]) -> list[Region]:
    """The regions by name in this request's language."""
    overrides, spoken = web().settings.region_names, language()
    return [Region(code, i18n.region_name(code, spoken, overrides)) for code in codes]


def not_offered(codes: Iterable[str]) -> str | None:
    """The refusal of regions this site does not send news about, or None."""
    offered = web().offered()
    missing = [code for code in codes if code not in offered]
    if not missing:
        return None
    listed = ", ".join(f"{region.name} ({region.code})" for region in names(missing))
    return (f"We do not send news about {listed}: choose among the regions listed"
            if len(listed) < 200 else "We do not send news about some of these regions: choose among "
                                      "the regions listed")


def check_form(subscriber_id: int, purpose: str, again: str) -> Response | None:
    """CSRF: a post from another site's page, or without this form's fresh token, is refused."""
    if origin_refused(request, {web().own_origin}):
        return problem(403, "Not from here", "This form can only be sent from our own page.",
                       link=(again, "Open the page again"))
    if not check_form_token(web().secret, request.form.get("csrf", ""), subscriber_id=subscriber_id,
                            purpose=purpose, max_age=FORM_MAX_AGE):
        return problem(400, "Please try again",
                       "This page was open for a long time, or the form did not come from it. Nothing was "
                       "changed: open the page again and repeat.", link=(again, "Open the page again"))
    return None


def sentence(reason: str) -> str:
    return reason[:1].upper() + reason[1:300] + ("" if reason.endswith(".") else ".")


@lru_cache(maxsize=8)
def _sorted_regions(overrides: tuple[tuple[str, str], ...], codes: frozenset[str], spoken: str) -> tuple[Region, ...]:
    names = dict(overrides)
    regions = [Region(code, i18n.region_name(code, spoken, names)) for code in codes]
    return tuple(sorted(regions, key=lambda r: r.name.casefold()))
