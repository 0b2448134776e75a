"""Text clean-up every request goes through before the tokenizer sees it.

Magpie's tokenizers were trained on plain punctuation; typographic quotes and dashes, emoji and
control characters either become noise or crash a phoneme tokenizer. This runs on every path
(HTTP and WebSocket, stream and batch).
"""

from __future__ import annotations

import re
import unicodedata

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


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_REPLACEMENTS)
    text = "".join(" " if ch.isspace() else ch for ch in text
                   if ch.isspace() or unicodedata.category(ch) not in _DROPPED_CATEGORIES)
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    text = _REPEATED_COMMAS.sub(",", text)
    return text.strip(" ,")
