"""The fast path: a message skeleton serialised once per variant, per-subscriber
values spliced in. It decodes to the same headers and parts as `build_message`
(a property test holds the two together) at a fraction of the cost: the
reference path spends ~7 ms per message in the email package's pure-Python
header parsing and quoted-printable encoder; this one spends well under 1 ms.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass
from email import policy
from email.headerregistry import Address

from worker.render.digest import RenderedVariant, check_header_text
from worker.render.message import ONE_CLICK
from worker.render.personalise import TOKENS, Recipient, for_place

_POLICY = policy.SMTP


def _fold(name: str, value) -> bytes:
    return _POLICY.header_factory(name, value).fold(policy=_POLICY).encode("ascii")


def _qp(text: str) -> bytes:
    # binascii's encoder is C; istext keeps line breaks as line breaks, then CRLF.
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    return binascii.b2a_qp(body.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


_TOKEN = re.compile("(" + "|".join(re.escape(t) for t in TOKENS.values()) + ")")
_KEY_OF = {token: key for key, token in TOKENS.items()}
_SOFT = b"=\r\n"


@dataclass(frozen=True)
class EncodedBody:
    """A part quoted-printable encoded once, with holes where the personal values go.

    Each piece is encoded on its own and the pieces are joined with soft line
    breaks, so no line exceeds 76 characters and a value never shifts the
    encoding of the rest: per message only the few short values are encoded.
    """

    pieces: tuple[bytes | str, ...]  # encoded bytes, or the key of a personal value
    escape: bool

    @classmethod
    def build(cls, text: str, *, escape: bool) -> EncodedBody:
        body = text if text.endswith("\n") else text + "\n"
        pieces: list[bytes | str] = []
        for chunk in _TOKEN.split(body):
            if chunk in _KEY_OF:
                pieces.append(_KEY_OF[chunk])
            elif chunk:
                pieces.append(_qp(chunk))
        return cls(tuple(pieces), escape)

    def render(self, values: dict[str, str]) -> bytes:
        out: list[bytes] = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.extend((_SOFT, _qp(for_place(values[piece], escape=self.escape)), _SOFT))
            else:
                out.append(piece)
        return b"".join(out)


def _plain_name(name: str) -> bool:
    """A display name that needs neither quoting nor encoding (the common case)."""
    return name.isascii() and all(c.isalnum() or c in " .-'" for c in name) and name.strip() == name


@dataclass(frozen=True)
class MessageSkeleton:
    head: bytes        # From, (To goes here), Subject ...
    subject: bytes
    list_id: bytes
    tail: bytes        # MIME-Version, Content-Type and the part headers up to the text body
    middle: bytes      # between the text part and the HTML part
    end: bytes
    text: EncodedBody
    html: EncodedBody

    @classmethod
    def build(cls, variant: RenderedVariant, *, sender: Address, list_id: str,
              subject_prefix: str = "") -> MessageSkeleton:
        subject = " ".join((subject_prefix + variant.subject).split())
        check_header_text("subject", subject)
        check_header_text("List-Id", list_id)
        boundary = "===============" + hashlib.sha256(
            (variant.edition_key + variant.key + subject).encode()).hexdigest()[:20] + "=="
        part = ('--{b}\r\nContent-Type: text/{kind}; charset="utf-8"\r\n'
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n")
        return cls(
            head=_fold("From", sender),
            subject=_fold("Subject", subject),
            list_id=_fold("List-Id", f"<{list_id}>"),
            tail=(f"List-Unsubscribe-Post: {ONE_CLICK}\r\nMIME-Version: 1.0\r\n"
                  f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n'
                  + part.format(b=boundary, kind="plain")).encode("ascii"),
            middle=("\r\n" + part.format(b=boundary, kind="html")).encode("ascii"),
            end=f"\r\n--{boundary}--\r\n".encode("ascii"),
            text=EncodedBody.build(variant.text, escape=False),
            html=EncodedBody.build(variant.html, escape=True),
        )

    def render(self, *, to: Address, recipient: Recipient, message_id: str, date: str,
               unsubscribe_header: str) -> bytes:
        for what, value in (("Message-ID", message_id), ("unsubscribe URL", unsubscribe_header),
                            ("recipient name", to.display_name)):
            check_header_text(what, value)
        if to.display_name and _plain_name(to.display_name) and to.username.isascii():
            to_line = f"To: {to.display_name} <{to.addr_spec}>\r\n".encode("ascii")
            if len(to_line) > 78:
                to_line = _fold("To", to)
        elif not to.display_name and to.username.isascii():
            to_line = f"To: {to.addr_spec}\r\n".encode("ascii")
        else:
            to_line = _fold("To", to)
        values = recipient.values()
        return b"".join((
            self.head, to_line, self.subject, f"Date: {date}\r\nMessage-ID: {message_id}\r\n".encode("ascii"),
            self.list_id, _list_unsubscribe(unsubscribe_header), self.tail,
            self.text.render(values), self.middle, self.html.render(values), self.end,
        ))


def _list_unsubscribe(value: str) -> bytes:
    # ASCII URLs in angle brackets: fold at the comma between them, as policy.SMTP does.
    if not value.isascii() or " " in value.replace(", ", ""):
        return _fold("List-Unsubscribe", value)
    return ("List-Unsubscribe:\r\n " + value.replace(", ", ",\r\n ") + "\r\n").encode("ascii")
