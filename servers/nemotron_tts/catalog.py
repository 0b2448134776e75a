"""What a request may ask for (voices, languages) and turning its text into model input."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .text import normalize


class RequestError(ValueError):
    """A request the client can fix; the message says how."""


@dataclass(frozen=True)
class Prepared:
    chunks: list[torch.Tensor]
    speaker: int
    text: str


class Catalog:
    def __init__(self, voices: list[str], default_voice: str, languages: list[str], tokenize) -> None:
        self.voices = {name: index for index, name in enumerate(voices)}
        self.default_voice = default_voice
        self.languages = languages
        self._tokenize = tokenize

    def voice(self, name: str | None) -> int:
        name = (name or self.default_voice).strip().lower()
        if name not in self.voices:
            raise RequestError(f"unknown voice {name!r}; valid voices: {', '.join(self.voices)}")
        return self.voices[name]

    def language(self, code: str | None) -> str:
        code = (code or "en").strip().lower()
        if code not in self.languages:
            raise RequestError(f"unknown language {code!r}; valid languages: {', '.join(self.languages)}")
        return code

    def prepare(self, text: object, voice: str | None, language: str | None) -> Prepared:
        if not isinstance(text, str) or not text.strip():
            raise RequestError("text is empty")
        speaker, code = self.voice(voice), self.language(language)
        clean = normalize(text)
        if not clean:
            raise RequestError("text has nothing speakable after normalisation")
        chunks = self._tokenize(clean, code)
        if not chunks or all(len(chunk) <= 1 for chunk in chunks):
            raise RequestError(f"text has no characters the {code!r} tokenizer knows")
        return Prepared(chunks, speaker, clean)
