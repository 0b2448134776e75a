"""OpenAI's transcription responses, as pure functions: no socket, no model.

A streaming model does not time words, but each interim result says how much audio the model had
consumed when its text grew (``heard_ms``). :class:`Timeline` keeps those points and times each
character by the first interim that held it, which places words to within one encoder chunk; that
is what the ``verbose_json``, ``srt`` and ``vtt`` timestamps are made of.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

RESPONSE_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
GRANULARITIES = ("segment", "word")
# A subtitle cue ends at a sentence's end, or before it grows past this many characters.
MAX_SEGMENT_CHARS = 120
LANGUAGE = "english"


@dataclass(frozen=True)
class Span:
    start: float  # seconds
    end: float
    text: str


class Timeline:
    """When each character of a transcript first appeared, in seconds of audio."""

    def __init__(self) -> None:
        self._ends: list[float] = []  # per character of the text so far
        self.text = ""

    def interim(self, text: str, heard_ms: float) -> str:
        """Record an interim; returns the text it appends to the previous one (empty if none)."""
        delta = text[len(self.text):] if text.startswith(self.text) else ""
        shared = len(os.path.commonprefix([self.text, text]))
        self._ends = self._ends[:shared] + [heard_ms / 1000] * (len(text) - shared)
        self.text = text
        return delta

    def final(self, text: str, duration_s: float) -> str:
        """Record the final transcript (its late characters end with the audio); returns the delta."""
        delta = self.interim(text, duration_s * 1000)
        self._ends = [min(end, duration_s) for end in self._ends]
        return delta

    def words(self) -> list[Span]:
        spans, previous_end = [], 0.0
        for match in re.finditer(r"\S+", self.text):
            end = self._ends[match.end() - 1]
            spans.append(Span(previous_end, end, match.group()))
            previous_end = end
        return spans

    def segments(self) -> list[Span]:
        """Sentences (split after . ! ?), or shorter pieces where a sentence runs long."""
        spans, start, previous_end = [], 0, 0.0
        for index, word in enumerate(words := list(re.finditer(r"\S+", self.text))):
            last = index == len(words) - 1
            long = word.end() - start >= MAX_SEGMENT_CHARS
            if last or long or word.group()[-1] in ".!?":
                end = self._ends[word.end() - 1]
                spans.append(Span(previous_end, end, self.text[start:word.end()].strip()))
                start, previous_end = word.end(), end
        return spans


def render(response_format: str, timeline: Timeline, duration_s: float,
           granularities: tuple[str, ...] = ("segment",)) -> tuple[str, str]:
    """The response body and its content type."""
    text = timeline.text
    if response_format == "json":
        return json.dumps({"text": text, "usage": {"type": "duration", "seconds": round(duration_s, 3)}}), \
            "application/json"
    if response_format == "text":
        return text + "\n", "text/plain"
    if response_format == "verbose_json":
        body = {"task": "transcribe", "language": LANGUAGE, "duration": round(duration_s, 3), "text": text}
        if "segment" in granularities:
            body["segments"] = [{"id": i, "seek": 0, "start": round(s.start, 3), "end": round(s.end, 3),
                                 "text": s.text, "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
                                 "compression_ratio": 0.0, "no_speech_prob": 0.0}
                                for i, s in enumerate(timeline.segments())]
        if "word" in granularities:
            body["words"] = [{"word": w.text, "start": round(w.start, 3), "end": round(w.end, 3)}
                             for w in timeline.words()]
        return json.dumps(body), "application/json"
    if response_format == "srt":
        cues = [f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text}\n"
                for i, s in enumerate(timeline.segments(), 1)]
        return "\n".join(cues), "application/x-subrip"
    if response_format == "vtt":
        cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text}\n" for s in timeline.segments()]
        return "WEBVTT\n\n" + "\n".join(cues), "text/vtt"
    raise ValueError(f"unknown response_format {response_format!r}")


def _clock(seconds: float, decimal: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def sse_event(body: dict) -> bytes:
    """One server-sent event as OpenAI streams transcripts (``transcript.text.delta`` / ``.done``)."""
    return f"data: {json.dumps(body)}\n\n".encode()
