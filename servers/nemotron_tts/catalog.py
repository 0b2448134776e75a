"""What a request may ask for (voices, languages) and turning its text into model input."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .interface import RequestError
from .text import normalize

__all__ = ["Catalog", "Prepared", "RequestError"]


@dataclass(frozen=True)
class Prepared:
    chunks: list[Sequence[int]]  # token ids per sentence chunk: tensors in-process, lists for a child
    speaker: int
    text: str


def _optional_string(value: object, field: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{field} must be a string, not {type(value).__name__}")
    return value


class Catalog:
    def __init__(self, voices: list[str], default_voice: str, languages: list[str],
                 tokenize: Callable[[str, str], list], max_text_chars: int = 4000) -> None:
        self.voices = {name: index for index, name in enumerate(voices)}
        self.default_voice = default_voice
        self.languages = languages
        self.max_text_chars = max_text_chars
        self.tokenize = tokenize  # (text, language) -> token ids per sentence chunk

    @classmethod
    def from_config(cls, config, languages: list[str], tokenize: Callable[[str, str], list]) -> Catalog:
        """The voices and text limit a ``TTSConfig`` sets, the model's languages and tokenizer."""
        return cls(config.voice_names, config.default_voice.lower(), list(languages), tokenize,
                   config.max_text_chars)

    def voice(self, name: object) -> int:
        name = (_optional_string(name, "voice") or self.default_voice).strip().lower()
        if name not in self.voices:
            raise RequestError(f"unknown voice {name!r}; valid voices: {', '.join(self.voices)}")
        return self.voices[name]

    def language(self, code: object) -> str:
        code = (_optional_string(code, "language") or "en").strip().lower()
        if code not in self.languages:
            raise RequestError(f"unknown language {code!r}; valid languages: {', '.join(self.languages)}")
        return code

    def prepare(self, text: object, voice: object, language: object) -> Prepared:
        """Model input for one request, or RequestError before anything reaches the engine: a text
        the model cannot take must never be batched with other clients' texts."""
        if text is not None and not isinstance(text, str):
            raise RequestError(f"text must be a string, not {type(text).__name__}")
        if not text or not text.strip():
            raise RequestError("text is empty")
        if len(text) > self.max_text_chars:
            raise RequestError(f"text is longer than {self.max_text_chars} characters; "
                               "send it as several segments")
        speaker, code = self.voice(voice), self.language(language)
        clean = normalize(text)
        if not clean:
            raise RequestError("text has nothing speakable after normalisation")
        chunks = self.tokenize(clean, code)
        if not chunks or all(len(chunk) <= 1 for chunk in chunks):
            raise RequestError(f"text has no characters the {code!r} tokenizer knows")
        return Prepared(chunks, speaker, clean)
