"""Quoted-printable parts with holes for the personal values: encoded once per variant,
filled per copy (the skeleton's bodies, and the size a variant's HTML part has as sent)."""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from worker.render.personalise import MARKER, for_place


def _qp(text: str) -> bytes:
    # binascii's encoder is C; istext keeps line breaks as line breaks, then CRLF.
    body = text.replace("\r\n", "\n").replace("\r", "\n")
    return binascii.b2a_qp(body.encode("utf-8"), istext=True).replace(b"\n", b"\r\n")


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
    def build(cls, text: str, *, tokens: dict[str, str], escape: bool) -> EncodedBody:
        body = text if text.endswith("\n") else text + "\n"
        key_of = {token: key for key, token in tokens.items()}
        pieces: list[bytes | str] = []
        start = 0
        for match in MARKER.finditer(body):
            key = key_of.get(match[0])
            if key is None:  # shaped like a marker, not one of this render's: text
                continue
            if match.start() > start:
                pieces.append(_qp(body[start:match.start()]))
            pieces.append(key)
            start = match.end()
        if start < len(body):
            pieces.append(_qp(body[start:]))
        return cls(tuple(pieces), escape)

    def render(self, values: dict[str, str]) -> bytes:
        out: list[bytes] = []
        for piece in self.pieces:
            if isinstance(piece, str):
                out.extend((_SOFT, _qp(for_place(values[piece], escape=self.escape)), _SOFT))
            else:
                out.append(piece)
        return b"".join(out)
