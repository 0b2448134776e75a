"""Text clean-up every request goes through before the tokenizer sees it.

Magpie's tokenizers were trained on plain punctuation; typographic quotes and dashes, emoji and
control characters either become noise or crash a phoneme tokenizer. This runs on every path
(HTTP and WebSocket, stream and batch).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable

_REPLACEMENTS = str.maketrans({
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2013": ", ", "\u2014": ", ", "\u2015": ", ", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "\u2009": " ", "\u202f": " ",
    "*": "", "_": " ", "#": "", "~": "", "`": "", "|": ", ",
})
# Symbols (emoji, dingbats), private use, unassigned and control characters carry no speech.
_DROPPED_CATEGORIES = {"So", "Sk", "Cs", "Co", "Cn", "Cc", "Cf"}
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:])")
_REPEATED_COMMAS = re.compile(r"(,\s*)+,")
# Where a sentence too long to speak in one piece is cut: after a clause's punctuation first, then
# between words; a run without either is cut where it stops fitting.
_BOUNDARIES = (re.compile(r"(?<=[,;:])\s+|(?<=[\uff0c\u3001\uff1b\uff1a])"), re.compile(r"\s+"))


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_REPLACEMENTS)
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_COMMAS.sub(",", text)
    return text.strip(" ,")


def split_long(text: str, fits: Callable[[str], bool]) -> list[str]:
    """``text`` as consecutive pieces that each ``fits``, cut after clause punctuation where it can,
    else between words, else inside a run as late as fits; nothing but the whitespace at a cut is lost.

    Magpie speaks at most its frame limit of one sentence (about 23 s) and the server keeps text
    memory for the longest one it has seen, so a run-on sentence must not reach the model whole."""
    if fits(text):
        return [text]
    for boundary in _BOUNDARIES:
        if pieces := _pack(text, boundary, fits):
            return [piece for packed in pieces for piece in split_long(packed, fits)]
    longest, too_long = 1, len(text)  # the run's longest start that fits, by bisection
    while too_long - longest > 1:
        middle = (longest + too_long) // 2
        longest, too_long = (middle, too_long) if fits(text[:middle]) else (longest, middle)
    return [text[:longest], *split_long(text[longest:], fits)]


def _pack(text: str, boundary: re.Pattern, fits: Callable[[str], bool]) -> list[str]:
    """``text`` cut at ``boundary`` into as few consecutive pieces as fit (a part that alone does not
    fit is a piece of its own, to be cut finer); empty if the boundary does not occur inside it."""
    cuts = [match.span() for match in boundary.finditer(text)
            if 0 < match.start() and match.end() < len(text)]
    if not cuts:
        return []
    starts = [0] + [end for _, end in cuts]
    ends = [start for start, _ in cuts] + [len(text)]
    pieces, first = [], 0
    while first < len(starts):
        last = first
        while last + 1 < len(ends) and fits(text[starts[first]:ends[last + 1]]):
            last += 1
        pieces.append(text[starts[first]:ends[last]])
        first = last + 1
    return pieces
