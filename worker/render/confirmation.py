"""The confirmation mail of a sign-up: a small transactional message, not a list mail.

Its own templates (templates/email/confirm/), rendered and inlined once per region set
and kind with markers for the two personal values (the address and the link, filled by
personalise.fill as in a digest), a hand-written text part, and the same header rules
as a digest: every header written by worker/render/headers.py and the written block
checked. No List-Unsubscribe: nobody is on a list yet. `Auto-Submitted: auto-generated`
(RFC 3834) keeps vacation responders quiet. It shows nothing anyone typed into the form
but the address it goes to: the form is open to anyone, and a name field is a way to
put words of a stranger's choosing into a mail from us.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.utils import format_datetime
from functools import lru_cache
from pathlib import Path

from worker import i18n
from worker.clock import utcnow
from worker.render.digest import check_header_text
from worker.render.env import get_template
from worker.render.headers import check_header_block, mailbox_header, unstructured
from worker.render.inline import inline_css
from worker.render.message import mailbox, needs_smtputf8, sign
from worker.render.personalise import fill, markers, new_nonce
from worker.settings import Settings

TEMPLATE = "confirm"
FIELDS = ("From", "To", "Subject", "Date", "Message-ID", "Auto-Submitted", "MIME-Version", "Content-Type")
_PERSONAL = ("email", "confirm_url")


@dataclass(frozen=True)
class ConfirmationMail:
    envelope_from: str
    envelope_to: str
    data: bytes
    message_id: str
    smtputf8: bool


@dataclass(frozen=True)
class _Rendered:
    subject: str
    html: str
    text: str
    nonce: str


def build_confirmation(settings: Settings, *, email: str, regions: tuple[str, ...], confirm_url: str,
                       already_active: bool, message_id: str, now: datetime | None = None,
                       return_path: str | None = None, language: str | None = None) -> ConfirmationMail:
    """The whole message for one confirmation link, as bytes for the wire: DKIM-signed as a
    digest is, and sent from `return_path` (the sign-up's VERP address) when given; in
    `language` (the sign-up's), else NEWSLETTER_LANGUAGE."""
    language = language or settings.language
    rendered = _render(settings.templates_dir, settings.css_inliner, _newsletter(settings),
                       tuple(i18n.region_name(code, language, settings.region_names) for code in regions),
                       already_active, settings.confirm_link_hours, language)
    values = {"email": email, "confirm_url": confirm_url}
    check_header_text("Message-ID", message_id)
    to = mailbox(email, None)
    msg = EmailMessage(policy=policy.SMTP)
    for line in (mailbox_header("From", settings.sender), mailbox_header("To", to),
                 unstructured("Subject", rendered.subject)):
        name, _, value = line.partition(": ")
        # Written by us, stored raw: the email package would decode encoded-words (headers.py).
        msg.set_raw(name, value.removesuffix("\r\n"))
    msg["Date"] = format_datetime(now or utcnow())
    msg["Message-ID"] = message_id
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(fill(rendered.text, values, nonce=rendered.nonce, escape=False),
                    subtype="plain", charset="utf-8", cte="quoted-printable")
    msg.add_alternative(fill(rendered.html, values, nonce=rendered.nonce, escape=True),
                        subtype="html", charset="utf-8", cte="quoted-printable")
    smtputf8 = needs_smtputf8(msg)
    data = msg.as_bytes(policy=policy.SMTPUTF8 if smtputf8 else policy.SMTP)
    check_header_block(data.split(b"\r\n\r\n", 1)[0], FIELDS)
    return ConfirmationMail(envelope_from=return_path or settings.sender.addr_spec, envelope_to=to.addr_spec,
                            data=sign(data, settings), message_id=message_id, smtputf8=smtputf8)


def _newsletter(settings: Settings) -> tuple[tuple[str, str | None], ...]:
    return (("name", settings.newsletter_name), ("brand_color", settings.brand_color),
            ("postal_address", settings.postal_address), ("public_url", settings.public_url),
            ("site_url", settings.site_url or None))


@lru_cache(maxsize=64)
def _render(templates_dir: Path, inliner: str, newsletter: tuple, names: tuple[str, ...], already_active: bool,
            hours: int, language: str = i18n.DEFAULT) -> _Rendered:
    """Jinja2 and the inliner once per (settings, region names, kind, language): a sign-up is cheap."""
    nonce = new_nonce()
    context = {
        "lang": language,
        "newsletter": dict(newsletter),
        "region_names": i18n.prose_list(list(names), language),
        "already_active": already_active,
        "hours": hours,
        **markers(nonce, _PERSONAL),
    }
    subject = " ".join(get_template(templates_dir, f"{TEMPLATE}/subject.txt", language).render(context).split())
    check_header_text("subject", subject)
    html = inline_css(get_template(templates_dir, f"{TEMPLATE}/body.html", language).render(context), inliner=inliner)
    text = get_template(templates_dir, f"{TEMPLATE}/body.txt", language).render(context).strip() + "\n"
    return _Rendered(subject=subject, html=html, text=text, nonce=nonce)
