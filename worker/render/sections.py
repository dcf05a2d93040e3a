"""A digest's CSS inlined once per section and edition, not once per region set.

A region set's document is a skeleton (head, header, intro, footer) around one section
per region (its stories, "more" link and "Stop <region> news" link), each between two
section marks the template writes. The rules the inliners apply here select an element
by itself and its ancestors only, and both serialisers write a node without looking at
its neighbours' content. So a section inlined under the same ancestors is the same bytes
in every document, and a skeleton whose body text is replaced by tokens is the same
bytes for every region set with the same structure: the text is written back as the
same inliner writes it in a document of text only. What is cached, per edition (the
VariantRenderer owns one cache) and per process:

- a skeleton, inlined bare (no sections) with its body's text runs masked, by that
  masked text;
- a section, inlined alone in its place in the skeleton, by its own rendered text and
  the skeleton before and after the sections: a trim, an edited story or the first
  section's missing divider is another text, so another entry.

Once these are cached, a region set costs one inliner call, for its text runs.
Equality with the whole document inlined (`inline_whole`, the reference) is claimed only
where the reasoning holds; elsewhere, say a customised template or markup a parser has
to repair, the document is inlined whole and the reason counted (`Fallback`): marks
missing or not between white space, markup between sections, a stylesheet in a section,
a raw-text element in the skeleton's body, a selector that looks at siblings, position
or content, a section that changes the skeleton around it. The first document of each
skeleton is also compared with the reference, and a difference sends the rest of the
edition the whole way.

Markers: a rendered document carries its render's nonce in its personal markers
(personalise.py). Cached pieces hold this cache's own nonce instead, as do the section
marks and text tokens; both nonces are random and secret, so story text, which is data,
can neither split a document nor become a marker when a piece is put back.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from enum import StrEnum

from markupsafe import Markup

from worker import metrics
from worker.render.inline import inline_css, run_inliner
from worker.render.personalise import new_nonce

log = logging.getLogger(__name__)

# Enough for every region first and later, at every trim level, of a few skeletons.
_MAX_SECTIONS = 2048
_MAX_SKELETONS = 128

_WHITE = " \t\n\r\f"
_ATTRS = r"""(?:"[^"]*"|'[^']*'|[^'">])*"""
_TAG = re.compile(rf"(<!--.*?-->|<[a-zA-Z/!?]{_ATTRS}>)", re.S)
_BODY = re.compile(rf"<body\b{_ATTRS}>", re.I)
# Where a text run is not plain text (raw text, RCDATA), or loses a leading newline (pre).
_RAW_TEXT = re.compile(r"<(?:script|style|textarea|title|xmp|iframe|noembed|noframes|noscript|plaintext|pre|"
                       r"listing)\b", re.I)
_STYLESHEET = re.compile(r"<(?:style|link)\b", re.I)
_STYLE = re.compile(r"<style\b[^>]*>(.*?)</style", re.S | re.I)
_PARAGRAPH = re.compile(r"<p>(.*?)</p>", re.S)
# Pseudo-classes and -elements that depend on the element alone, never on its siblings
# or content; any other (:first-child, :nth-*, :empty, :has, :not...) is not local.
_LOCAL_PSEUDO = frozenset({"link", "visited", "hover", "active", "focus", "focus-visible", "focus-within",
                           "target", "root", "before", "after", "first-letter", "first-line", "selection",
                           "placeholder"})


class Fallback(StrEnum):
    """Why a document was inlined whole."""

    NO_MARKS = "no section marks"
    EDGES = "a section mark not between white space"
    BETWEEN = "markup between sections"
    STYLESHEET = "a stylesheet in a section"
    NO_BODY = "no <body> in the skeleton"
    RAW_TEXT = "a raw-text element in the skeleton's body"
    SELECTORS = "a selector that looks at siblings, position or content"
    MOVED = "the inliner moved a section mark"
    LEAKS = "a section changes the skeleton around it"
    DIFFERS = "the assembled document differs from the whole one inlined"


def section_mark(nonce: str) -> Markup:
    """Written by the template before and after each section (`{{ section_mark }}`)."""
    return Markup(f"<!--%%NL{nonce}_SECTION%%-->")


def inline_whole(html: str, *, nonce: str, inliner: str) -> str:
    """The reference: the document inlined as one, without its section marks."""
    return inline_css(html.replace(section_mark(nonce), ""), inliner=inliner)


class SectionCache:
    """Inlined sections and skeletons of one edition. Shared by the delivery lanes
    (threads): reads are single dictionary lookups, writes take a lock; two lanes may
    inline the same piece at once, and both get the same bytes."""

    def __init__(self) -> None:
        self._nonce = new_nonce()
        self._mark = str(section_mark(self._nonce))
        self._token = re.compile(rf"%%NL{self._nonce}_T(\d+)%%")
        # (inliner, skeleton before the sections, after them, section) -> the section inlined
        self._sections: dict[tuple[str, str, str, str], str] = {}
        # (inliner, masked skeleton) -> its inlined parts around the sections' places, split at the tokens
        self._skeletons: dict[tuple[str, str], tuple[list, ...]] = {}
        self._lock = threading.Lock()
        self._broken: Fallback | None = None
        self.fallbacks: Counter[Fallback] = Counter()

    def inline(self, html: str, *, nonce: str, inliner: str) -> str:
        """`html` inlined, equal to `inline_whole(html, ...)`."""
        own = f"%%NL{self._nonce}_"
        pieces = html.replace(f"%%NL{nonce}_", own).split(self._mark)
        frame, sections = pieces[0::2], pieces[1::2]
        found = self._broken or _unsafe(frame, sections) or _mask((self._mark * 2).join(frame), self._nonce)
        if isinstance(found, Fallback):
            return self._whole(html, nonce=nonce, inliner=inliner, reason=found)
        masked, runs = found
        # What a section's rules can see besides itself: the skeleton before and after the sections.
        context = (inliner, masked.split(self._mark, 1)[0], masked.rsplit(self._mark, 1)[1])
        skeleton = self._skeletons.get((inliner, masked))
        cached = [self._sections.get((*context, section)) for section in sections]
        new = skeleton is None
        inlined = cached
        if new or None in cached:
            found = self._inline_new(masked, skeleton, sections, cached, inliner=inliner)
            if isinstance(found, Fallback):
                return self._whole(html, nonce=nonce, inliner=inliner, reason=found)
            skeleton, inlined = found
        texts = _inline_texts(runs, inliner=inliner)
        if texts is None:
            return self._whole(html, nonce=nonce, inliner=inliner, reason=Fallback.MOVED)
        result = _assemble(skeleton, inlined, texts).replace(own, f"%%NL{nonce}_")
        metrics.count_inlined(inliner)
        if new:
            whole = run_inliner(html.replace(section_mark(nonce), ""), inliner=inliner)
            if result != whole:
                self._broken = Fallback.DIFFERS
                self.fallbacks[Fallback.DIFFERS] += 1
                log.warning("a document inlined by sections differs from it inlined whole: "
                            "the rest of this edition is inlined whole")
                return whole
        if new or None in cached:
            with self._lock:
                if new:
                    _keep(self._skeletons, (inliner, masked), skeleton, _MAX_SKELETONS)
                for section, done, was in zip(sections, inlined, cached, strict=True):
                    if was is None:
                        _keep(self._sections, (*context, section), done, _MAX_SECTIONS)
        return result

    def _inline_new(self, masked: str, skeleton: tuple[list, ...] | None, sections: list[str],
                    inlined: list[str | None], *, inliner: str) -> tuple[tuple[list, ...], list[str]] | Fallback:
        """The skeleton inlined bare, unless cached, and each section not cached inlined
        alone in its place. A section must leave the skeleton around it as it was: one that
        leaves an element open, or closes or moves one of the skeleton's (a parser's repair
        of broken markup), would change other documents than its own."""
        places = masked.split(self._mark)
        if skeleton is None:
            if _RAW_TEXT.search(masked, _BODY.search(masked).end()):
                return Fallback.RAW_TEXT
            if not _local_selectors(masked):
                return Fallback.SELECTORS
            skeleton = self._inline_skeleton(places, inliner=inliner)
            if skeleton is None:
                return Fallback.MOVED
        done = list(inlined)
        for n, section in enumerate(sections):
            if done[n] is not None:
                continue
            if _STYLESHEET.search(section):
                return Fallback.STYLESHEET
            alone = places.copy()
            alone[2 * n + 1] = section
            parts = run_inliner(self._mark.join(alone), inliner=inliner).split(self._mark)
            if len(parts) != len(places) or self._split(parts) != skeleton:
                return Fallback.LEAKS
            done[n] = parts[2 * n + 1]
        return skeleton, done

    def _inline_skeleton(self, places: list[str], *, inliner: str) -> tuple[list, ...] | None:
        parts = run_inliner(self._mark.join(places), inliner=inliner).split(self._mark)
        return self._split(parts) if len(parts) == len(places) else None

    def _split(self, parts: list[str]) -> tuple[list, ...]:
        # Around the sections' places, the skeleton: text and token numbers, alternating.
        return tuple(self._token.split(part) for part in parts[0::2])

    def _whole(self, html: str, *, nonce: str, inliner: str, reason: Fallback) -> str:
        if not self.fallbacks[reason]:
            log.info("documents of this edition inlined whole: %s", reason)
        self.fallbacks[reason] += 1
        return inline_whole(html, nonce=nonce, inliner=inliner)


def _assemble(skeleton: tuple[list, ...], sections: list[str], texts: list[str]) -> str:
    """The skeleton's parts (text and token numbers, alternating) around the sections."""
    out: list[str] = []
    for n, part in enumerate(skeleton):
        if n:
            out.append(sections[n - 1])
        out.extend(texts[int(chunk)] if i % 2 else chunk for i, chunk in enumerate(part))
    return "".join(out)


def _keep(cache: dict, key, value, most: int) -> None:
    cache[key] = value
    while len(cache) > most:
        del cache[next(iter(cache))]


def _unsafe(frame: list[str], sections: list[str]) -> Fallback | None:
    """Why this document's sections cannot be inlined apart, judged on its text."""
    if not sections or len(frame) != len(sections) + 1:
        return Fallback.NO_MARKS
    # A mark inside white space leaves every element's neighbours as they were: the
    # pretty printer's line breaks depend on whether a neighbour is text.
    edges = [frame[0][-1:], frame[-1][:1]] + [s[:1] for s in sections] + [s[-1:] for s in sections]
    if not all(edge and edge in _WHITE for edge in edges):
        return Fallback.EDGES
    # Text between sections is fine; an element would be a sibling a section's rules could see.
    if any("<" in between for between in frame[1:-1]):
        return Fallback.BETWEEN
    return None


def _mask(skeleton: str, nonce: str) -> tuple[str, list[str]] | Fallback:
    """The skeleton with its body's text runs replaced by tokens, and those runs. A raw-text
    element in the body, where a run is not plain text, is found on the masked skeleton."""
    body = _BODY.search(skeleton)
    if body is None:
        return Fallback.NO_BODY
    head, rest = skeleton[:body.end()], skeleton[body.end():]
    pieces = _TAG.split(rest)
    runs: list[str] = []
    for i in range(0, len(pieces), 2):
        run = pieces[i]
        core = run.strip(_WHITE)
        if core:
            # The white space stays: it decides which nodes are blank, and so how they parse.
            pieces[i] = (run[:len(run) - len(run.lstrip(_WHITE))] + f"%%NL{nonce}_T{len(runs)}%%"
                         + run[len(run.rstrip(_WHITE)):])
            runs.append(core)
    return head + "".join(pieces), runs


def _local_selectors(html: str) -> bool:
    """Every selector of the document's stylesheets looks at an element and its ancestors only."""
    css = re.sub(r"/\*.*?\*/", "", "\n".join(_STYLE.findall(html)), flags=re.S)
    css = re.sub(r""""[^"]*"|'[^']*'|\[[^\]]*\]|\([^()]*\)""", "", css)
    for prelude in re.findall(r"([^{};]*)\{", css):
        if prelude.strip().startswith("@"):
            continue
        if "+" in prelude or "~" in prelude:
            return False
        if any(name.lower() not in _LOCAL_PSEUDO for name in re.findall(r"::?([\w-]+)", prelude)):
            return False
    return True


def _inline_texts(runs: list[str], *, inliner: str) -> list[str] | None:
    """Each text run as the inliner writes it: a text node's bytes depend on its text alone."""
    if not runs:
        return []
    document = "<html><body>" + "".join(f"<p>{run}</p>" for run in runs) + "</body></html>"
    texts = _PARAGRAPH.findall(run_inliner(document, inliner=inliner))
    return texts if len(texts) == len(runs) else None
