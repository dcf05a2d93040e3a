"""Our words in the reader's language: gettext catalogs (worker/locale/<lang>/LC_MESSAGES/
messages.po, read with Babel), region names and dates from CLDR through Babel.

A language is one of the catalogs shipped (LANGUAGES). Anything a reader, a CSV cell or a
browser says is matched to one of them (`language_of`, `from_accept_language`) or
refused: a tag is data, never a path or a catalog to load.

Catalogs are read from their .po files and compiled in memory the first time a language
is used in a process: there is no build step, and no binary file in the repository.
docs/languages.md says how to add a language.
"""

from __future__ import annotations

import functools
import gettext
import io
import logging
import re
from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_interval
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

log = logging.getLogger(__name__)
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
DOMAIN = "messages"
# The catalogs we ship; English is the source language (its catalog maps each message to itself).
LANGUAGES = ("en", "ru", "uk")
DEFAULT = "en"
# Each language named in itself, for the pages' choice: a reader finds theirs whatever the page's.
NATIVE_NAMES = (("en", "English"), ("ru", "Русский"), ("uk", "Українська"))
# CLDR's English is American (Jan 27 – Feb 2, 2025); ours has always been British dates.
_DATE_LOCALES = {"en": "en_GB"}
# An Accept-Language header is read this far and for this many entries, no further.
MAX_ACCEPT = 512
MAX_ACCEPT_ENTRIES = 16
_TAG = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,4}")


class LanguageError(ValueError):
    """A language tag we have no catalog for, or no tag at all."""


def language_of(tag: str) -> str:
    """The shipped language a BCP 47 tag asks for: 'ru', 'ru-RU', 'RU_ru' -> 'ru';
    'uk-UA' -> 'uk'; 'en-GB' -> 'en'. LanguageError for anything else."""
    text = (tag or "").strip()
    if not _TAG.fullmatch(text):
        raise LanguageError(f"{text[:40]!r} is not a language tag such as en, ru or uk")
    language = text.replace("_", "-").split("-")[0].lower()
    if language not in LANGUAGES:
        raise LanguageError(f"no catalog for {text!r}: this list speaks {', '.join(LANGUAGES)}")
    return language


def from_accept_language(header: str | None) -> str | None:
    """The first shipped language a browser's Accept-Language prefers, or None. Bounded:
    read to MAX_ACCEPT characters and MAX_ACCEPT_ENTRIES entries; garbage is skipped."""
    if not header:
        return None
    ranked = []
    for position, entry in enumerate(header[:MAX_ACCEPT].split(",")[:MAX_ACCEPT_ENTRIES]):
        tag, _, params = entry.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:7])
            except ValueError:
                continue
        try:
            language = language_of(tag)
        except LanguageError:
            continue
        if quality > 0:
            ranked.append((-quality, position, language))
    return min(ranked)[2] if ranked else None


@functools.cache
def translations(language: str) -> gettext.GNUTranslations:
    """The language's catalog, compiled once per process. English: its own catalog, so a
    plural is still right ("1 story", "2 stories"). A translation whose placeholders are not
    its message's is left out (the English is used, and a warning logged): a catalog's
    mistake must never stop a send. The catalog test (tests/test_languages.py) fails on it."""
    if language not in LANGUAGES:
        raise LanguageError(f"no catalog for {language!r}")
    path = LOCALE_DIR / language / "LC_MESSAGES" / f"{DOMAIN}.po"
    with path.open("rb") as handle:
        catalog = read_po(handle, locale=language, domain=DOMAIN)
    for message in catalog:
        if message.id and broken_placeholders(message):
            log.warning("catalog %s: %r has placeholders its message has not: the English is used",
                        language, message.id)
            message.string = ("",) * len(message.string) if isinstance(message.string, tuple) else ""
    compiled = io.BytesIO()
    write_mo(compiled, catalog, use_fuzzy=False)
    compiled.seek(0)
    return gettext.GNUTranslations(compiled)


_PLACEHOLDER = re.compile(r"%\((\w+)\)[sd]|%[sd%]")


def broken_placeholders(message) -> bool:
    """A translation uses a placeholder its message does not give (it would fail to fill),
    or a bare %s/%d, which our messages never use."""
    ids = message.id if isinstance(message.id, tuple) else (message.id,)
    strings = message.string if isinstance(message.string, tuple) else (message.string,)
    given = {name for text in ids for name in _PLACEHOLDER.findall(text)}
    for text in strings:
        if not text:
            continue
        for match in _PLACEHOLDER.finditer(text):
            if match.group(1) is None and match.group(0) != "%%" or match.group(1) not in given | {None}:
                return True
        if text.count("%") != len(_PLACEHOLDER.findall(text)) + text.count("%%"):
            return True
    return False


def gettext_for(language: str):
    return translations(language).gettext


def ngettext_for(language: str):
    return translations(language).ngettext


def region_name(code: str, language: str, overrides: Mapping[str, str] | None = None) -> str:
    """A region's name in `language`: NEWSLETTER_REGION_NAMES for that language
    ({"ru:TW": "Тайвань (КР)"}), else in English a plain override ({"TW": "Taiwan (ROC)"})
    and the common short names of worker/regions.py, else CLDR's (Babel)."""
    from worker.regions import region_name as english_name

    overrides = overrides or {}
    own = overrides.get(f"{language}:{code}")
    if own:
        return own
    if language == DEFAULT:
        return english_name(code, overrides)
    return _cldr_territory(language, code) or english_name(code)


@functools.cache
def _cldr_territory(language: str, code: str) -> str | None:
    try:
        return Locale.parse(language).territories.get(code)
    except (UnknownLocaleError, ValueError):
        return None


def date_locale(language: str) -> str:
    return _DATE_LOCALES.get(language, language)


def day(moment: date | datetime, language: str) -> str:
    """'30 Jan 2025', '30 янв. 2025 г.'"""
    return format_date(moment, "medium" if language != DEFAULT else "d MMM y", locale=date_locale(language))


def date_range(first: date, last: date, language: str) -> str:
    """'27 Jan – 2 Feb 2025', '3 – 9 Feb 2025'; in Russian '27 янв. — 2 февр. 2025 г.'."""
    if first == last:
        return day(first, language)
    # CLDR puts thin spaces around the dash; some mail clients' fonts lack them.
    return format_interval(first, last, "yMMMd", locale=date_locale(language)).replace("\u2009", " ")


def prose_list(items: list[str], language: str) -> str:
    """'Russia and Ukraine', 'Россия и Украина', 'A, B and C'."""
    from babel.lists import format_list

    if not items:
        return ""
    return format_list(items, locale=date_locale(language))
