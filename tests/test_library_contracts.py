"""The library details our adapters rely on. If a library changes underneath, these fail
loudly here, not as a hung worker or a wrongly inlined digest in production."""

import inspect
import smtplib
import sys
from importlib.metadata import version

import premailer


def test_smtplib_reads_replies_through_self_file():
    # worker/delivery/smtp.py wraps `self.file` to give each reply a deadline.
    source = inspect.getsource(smtplib.SMTP.getreply)
    assert "if self.file is None:" in source and "self.file.readline(" in source, (
        f"smtplib.SMTP.getreply changed in Python {sys.version.split()[0]}: revisit _ReplyDeadline")


def test_premailer_parses_each_stylesheet_through_parse_style_rules():
    # worker/render/inline.py keeps the parsed rules between variants by overriding this method.
    method = getattr(premailer.Premailer, "_parse_style_rules", None)
    assert method is not None, f"premailer {version('premailer')} has no _parse_style_rules: revisit _Premailer"
    assert list(inspect.signature(method).parameters) == ["self", "css_body", "ruleset_index"]
    assert "self._parse_style_rules(" in inspect.getsource(premailer.Premailer.transform)

