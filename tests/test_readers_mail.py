"""The confirmation mail: its templates under StrictUndefined, the same header rules as a
digest, personal values only through the markers, nothing from the form but the address."""

from __future__ import annotations

from email import policy
from email.parser import BytesParser

import pytest
from jinja2 import UndefinedError, meta

from tests.conftest import REPO
from worker.errors import HeaderInjectionError
from worker.render.confirmation import FIELDS, _newsletter, _render, build_confirmation
from worker.render.env import get_template
from worker.render.personalise import markers

TEMPLATES = REPO / "templates" / "email"
URL = "https://news.example/confirm/WzEsImFiYyJd.aw7KWA.sig"


def _mail(settings, **kwargs):
    args = {"email": "anna@example.org", "regions": ("RU", "UA"), "confirm_url": URL, "already_active": False,
            "message_id": "<abc@news.example>"} | kwargs
    data = build_confirmation(settings, **args)
    return data, BytesParser(policy=policy.default).parsebytes(data.data)


def _context():
    return {"lang": "en", "newsletter": dict(_newsletter_for_test()), "region_names": "Russia and Ukraine",
            "already_active": False, "hours": 48, **markers("0123", ("email", "confirm_url"))}


def _newsletter_for_test():
    return (("name", "Melange News Weekly"), ("brand_color", "#b3261e"), ("postal_address", "1 Street"),
            ("public_url", "https://news.example"), ("site_url", None))


@pytest.mark.parametrize("name", ["subject.txt", "body.txt", "body.html"])
def test_every_confirm_template_renders_under_strict_undefined(name):
    template = get_template(TEMPLATES, f"confirm/{name}")
    context = _context()
    assert template.render(context).strip()
    env = template.environment
    sources = [f"confirm/{name}"] + ([] if name == "subject.txt" else ["_base/layout." + name.rsplit(".", 1)[1]])
    used = set().union(*(meta.find_undeclared_variables(env.parse(env.loader.get_source(env, s)[0]))
                         for s in sources))
    # The layout's digest-only variables (personal, edition...) sit in blocks the mail replaces.
    needed = {key for key in used if key in context}
    assert {"newsletter", "already_active"} <= needed
    assert name == "subject.txt" or {"email", "confirm_url", "region_names"} <= needed
    for key in needed:
        # A missing count fails in the plural's rule (TypeError), any other value as undefined.
        with pytest.raises((UndefinedError, TypeError)):
            template.render({k: v for k, v in context.items() if k != key})


def test_the_message_has_exactly_its_headers_a_text_part_and_no_list_headers(settings):
    mail, message = _mail(settings)
    head = mail.data.split(b"\r\n\r\n", 1)[0].decode()
    assert [line.split(":", 1)[0] for line in head.split("\r\n") if not line.startswith(" ")] == list(FIELDS)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    text = message.get_body(("plain",)).get_content()
    html = message.get_body(("html",)).get_content()
    assert URL in text and f'href="{URL}"' in html and "anna@example.org" in text and "anna@example.org" in html
    assert "%%NL" not in text and "%%NL" not in html
    assert "List-Unsubscribe" not in head and mail.envelope_to == "anna@example.org"
    assert max(map(len, mail.data.split(b"\r\n"))) <= 998


def test_personal_values_are_escaped_and_only_fill_their_markers(settings):
    _, message = _mail(settings, email="o'neil+x@example.org", confirm_url=URL + "?a=1&b=2")
    html = message.get_body(("html",)).get_content()
    assert "o&#x27;neil+x@example.org" in html and "a=1&amp;b=2" in html
    # A value that spells a marker stays text (one pass).
    rendered = _render(settings.templates_dir, settings.css_inliner, _newsletter(settings), ("Russia",),
                       False, 48)
    marker = markers(rendered.nonce, ("confirm_url",))["confirm_url"]
    _, message = _mail(settings, email="anna@example.org", regions=("RU",), confirm_url=URL + marker)
    assert marker in message.get_body(("plain",)).get_content()


def test_a_unicode_local_part_needs_smtputf8_and_an_idn_domain_goes_as_punycode(settings):
    mail, _ = _mail(settings, email="jürgen@bücher.example")
    assert mail.smtputf8 and mail.envelope_to == "jürgen@bücher.example"  # as a digest's (SMTPUTF8)
    plain, _ = _mail(settings, email="anna@bücher.example")
    assert not plain.smtputf8 and plain.envelope_to == "anna@xn--bcher-kva.example"


def test_hostile_values_never_become_header_lines(settings):
    with pytest.raises(HeaderInjectionError):
        _mail(settings, message_id="<a@b>\r\nBcc: x@evil.example")
    with pytest.raises(HeaderInjectionError):
        _mail(settings, email="anna@example.org\r\nBcc: x@evil.example")
    # A configured name made of encoded-words is written as encoded-words we make.
    named = settings.model_copy(update={"newsletter_name": "=?utf-8?b?eA0KQmNjOiB2QGV2aWwuZXhhbXBsZQ==?="})
    mail, message = _mail(named)
    assert message["Bcc"] is None and b"Bcc:" not in mail.data.split(b"\r\n\r\n")[0]


def test_the_mail_is_rendered_once_per_region_set(settings):
    from worker import metrics

    before = metrics.sample("newsletter_variants_inlined_total", inliner="premailer")
    for n in range(20):
        _mail(settings, email=f"r{n}@example.org", regions=("PL", "DE"))
    assert metrics.sample("newsletter_variants_inlined_total", inliner="premailer") - before <= 1
