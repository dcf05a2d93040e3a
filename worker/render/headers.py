"""Header lines written by us, so that nothing from outside is ever interpreted.

The email package decodes RFC 2047 encoded-words (`=?utf-8?b?...?=`) found in a
value while it folds the header, and writes what they decode to: a reader name
or a region name made of encoded-words becomes CR/LF on the wire (the class of
CVE-2024-6923, which this Python's email package does not guard against). So
every value that comes from outside (names, region names in the Subject, the
configured From) is written here: as it is only when it is printable ASCII that
cannot be read as an encoded-word, otherwise as encoded-words we make ourselves,
which decode back to exactly the text given.

`check_header_block` then checks what was actually written, on both the fast
(skeleton) and the reference (EmailMessage) paths: the header names we write,
once each, well-formed folding, and no control character in anything an
encoded-word decodes to.
"""

from __future__ import annotations

import base64
import binascii
import re
from email.headerregistry import Address

from worker.errors import HeaderInjectionError
from worker.text import contains_control

MAX_LINE = 78  # RFC 5322's "should"; 998 is the hard limit and is checked below
_OVERHEAD = len("=?utf-8?b??=")
# Bytes of UTF-8 per encoded-word, so that "Subject: " and one encoded-word fit in 78
# characters: a longer first line would make the email package refold (and decode) it.
_CHUNK = (MAX_LINE - len("Subject: ") - _OVERHEAD) // 4 * 3
# Printable ASCII; "=?" is excluded separately, as it could start an encoded-word.
_PRINTABLE = re.compile(r"[ -~]*")
# Characters a display name may carry unquoted (RFC 5322 atext, and spaces between words).
_ATOM_PHRASE = re.compile(r"[A-Za-z0-9!#$%&'*+/^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/^_`{|}~-]+)*")
_ENCODED_WORD = re.compile(r"=\?([^?\s]*)\?([bBqQ])\?([^?\s]*)\?=")
_FIELD = re.compile(r"([!-9;-~]+):")
# What every digest carries, in this order (a DKIM-Signature is prepended after the check).
DIGEST_FIELDS = (
    "From", "To", "Subject", "Date", "Message-ID", "List-Id", "List-Unsubscribe",
    "List-Unsubscribe-Post", "MIME-Version", "Content-Type",
)


def _literal(text: str) -> bool:
    """Printable ASCII that no reader could decode as an encoded-word."""
    return _PRINTABLE.fullmatch(text) is not None and "=?" not in text


def encoded_words(text: str) -> list[str]:
    """`text` as base64 UTF-8 encoded-words (under RFC 2047's 75 characters), split between characters."""
    words, chunk = [], b""
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > _CHUNK:
            words.append(chunk)
            chunk = b""
        chunk += data
    if chunk or not words:
        words.append(chunk)
    return [f"=?utf-8?b?{base64.b64encode(w).decode('ascii')}?=" for w in words]


def encoded_words_at_spaces(text: str) -> list[str]:
    """`text` as encoded-words that each end at a space, which travels inside the word
    before it (RFC 2047 6.2: readers drop the white space between two encoded-words). A
    word is split only when it alone is longer than one encoded-word holds. Readers that
    keep that white space (this Python's address parser, gh-128110) then show at most a
    doubled space between two words, never a space inside one."""
    words = text.split(" ")
    chunks, chunk = [], ""
    for word in (w + " " for w in words[:-1]):
        if chunk and len((chunk + word).encode("utf-8")) > _CHUNK:
            chunks.append(chunk)
            chunk = ""
        chunk += word
    last = words[-1]
    if chunk and len((chunk + last).encode("utf-8")) > _CHUNK:
        chunks.append(chunk)
        chunk = ""
    chunks.append(chunk + last)
    return [word for chunk in chunks for word in encoded_words(chunk)]


def _text_tokens(text: str) -> list[str]:
    """Words as they are when every word can be; otherwise the whole text as encoded-words.

    A mix of plain words and encoded-words decodes differently from one reader to the
    next once the line is folded next to an encoded-word: the folding white space between
    a word and an encoded-word is kept by some ("Jan  –") and dropped by others
    ("Jan–"). White space between two encoded-words is dropped by all of them, and the
    spaces of the text then travel inside the encoded-words, so the text decodes the same
    everywhere, wherever it is folded."""
    words = text.split()
    if all(_literal(word) and len(word) < 900 for word in words):
        return words
    return encoded_words_at_spaces(" ".join(words))


def _phrase_tokens(name: str) -> list[str]:
    if _ATOM_PHRASE.fullmatch(name) and "=?" not in name:
        return name.split(" ")
    quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if _literal(name) and len(quoted) <= 900:
        return [quoted]
    return encoded_words_at_spaces(name)


def _fold(name: str, tokens: list[str]) -> str:
    """Tokens joined by single spaces, a line break before a token that would pass 78 characters."""
    lines, line = [], f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > MAX_LINE and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + token
    lines.append(line)
    return "\r\n".join(lines) + "\r\n"


def unstructured(name: str, text: str) -> str:
    """A folded `Name: text` line (Subject), runs of spaces collapsed; `text` must already
    be checked for control characters."""
    return _fold(name, _text_tokens(" ".join(text.split())))


def mailbox_header(name: str, address: Address) -> str:
    """A folded `Name: display name <addr-spec>` line. The addr-spec is written as it is
    (validated at import; a Unicode local part needs SMTPUTF8)."""
    tokens = _phrase_tokens(address.display_name) if address.display_name else []
    return _fold(name, [*tokens, f"<{address.addr_spec}>"] if tokens else [address.addr_spec])


def check_header_block(block: bytes, expected: tuple[str, ...]) -> None:
    """Refuse a written header block (up to the blank line) unless it has exactly the
    `expected` fields, once each and in that order, folded correctly, and nothing in it
    (an encoded-word included) that decodes to a control character."""
    names = check_fields(block)
    if names != expected:
        raise HeaderInjectionError(f"unexpected header fields {list(names)}")


def check_fields(block: bytes) -> tuple[str, ...]:
    """The names of the header fields in `block` (whole lines, without the blank line),
    checked as `check_header_block` says."""
    if b"\x00" in block or max(map(len, block.split(b"\r\n"))) > 998:
        raise HeaderInjectionError("a header line is malformed or longer than 998 octets")
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise HeaderInjectionError("a header value is not valid UTF-8") from None
    if text[:1] in (" ", "\t"):
        raise HeaderInjectionError("the header block starts with a continuation line")
    fields = text.replace("\r\n ", " ").replace("\r\n\t", "\t").split("\r\n")
    names = [_FIELD.match(field) for field in fields]
    if not all(names):
        raise HeaderInjectionError(f"a header line is not a field: {fields[names.index(None)][:60]!r}")
    values = "".join(fields).replace("\t", " ")
    if contains_control(values):
        raise HeaderInjectionError("a header value contains a control character or a bare CR or LF")
    if "=?" in values:
        _check_encoded_words(values)
    return tuple(name[1] for name in names)


def _check_encoded_words(values: str) -> None:
    for charset, kind, data in _ENCODED_WORD.findall(values):
        try:
            raw = base64.b64decode(data + "===") if kind in "bB" else binascii.a2b_qp(data, header=True)
            decoded = raw.decode(charset.split("*")[0] or "ascii", errors="replace")
        except (binascii.Error, LookupError, ValueError):
            # Nobody can decode it; nor can a mail client, so it cannot turn into anything.
            continue
        if contains_control(decoded):
            raise HeaderInjectionError(f"an encoded-word in a header decodes to a control character: {decoded[:60]!r}")
