"""``POST /v1/audio/transcriptions``: an uploaded file through the streaming engine, answered as OpenAI does.

The file is decoded (WAV, FLAC, Ogg/Opus, MP3: whatever libsndfile reads), mixed to mono and
resampled to the model's 16 kHz, then fed to the engine as one stream with a hard reset at its end:
the same path, and the same batches, as the WebSocket clients' audio.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from aiohttp import web
from nemotron_common.resample import resample

from .protocol import BYTES_PER_SAMPLE, SAMPLE_RATE
from .transcripts import GRANULARITIES, RESPONSE_FORMATS, Timeline

if TYPE_CHECKING:
    from .interface import Result, StreamEngine

PATH = "/v1/audio/transcriptions"
STREAMED_FORMATS = ("json", "text")
FEED_BYTES = SAMPLE_RATE * BYTES_PER_SAMPLE  # one second per command to the engine


class BadUpload(ValueError):
    """What the client sent cannot be transcribed; the message says why (HTTP 400)."""


@dataclass(frozen=True)
class Upload:
    audio: bytes  # the model's PCM: s16le mono at 16 kHz
    response_format: str
    stream: bool
    granularities: tuple[str, ...]

    @property
    def duration_s(self) -> float:
        return len(self.audio) / BYTES_PER_SAMPLE / SAMPLE_RATE


def _flag(value: str, name: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0", ""):
        return False
    raise BadUpload(f"{name} must be true or false")


async def read_upload(request: web.Request) -> Upload:
    """The multipart form OpenAI clients send: ``file`` and the options; raises :class:`BadUpload`."""
    if not request.content_type.startswith("multipart/"):
        raise BadUpload("send the audio as multipart/form-data with a field named file")
    form = await request.post()
    upload = form.get("file")
    if not isinstance(upload, web.FileField):
        raise BadUpload("file is required: a multipart field named file holding the audio")
    response_format = str(form.get("response_format") or "json")
    if response_format not in RESPONSE_FORMATS:
        raise BadUpload(f"unknown response_format {response_format!r}; valid: {', '.join(RESPONSE_FORMATS)}")
    stream = _flag(str(form.get("stream", "false")), "stream")
    if stream and response_format not in STREAMED_FORMATS:
        raise BadUpload(f"stream=true gives transcript deltas as server-sent events; "
                        f"use response_format json or text, not {response_format}")
    language = str(form.get("language") or "en").lower()
    if language not in ("en", "english") and not language.startswith("en-"):
        raise BadUpload(f"language {language!r}: this model transcribes English only (en)")
    try:
        float(form.get("temperature") or 0)  # accepted for compatibility; decoding is greedy
    except ValueError:
        raise BadUpload("temperature must be a number") from None
    granularities = tuple(str(g) for g in form.getall("timestamp_granularities[]", ())) or ("segment",)
    if unknown := [g for g in granularities if g not in GRANULARITIES]:
        raise BadUpload(f"unknown timestamp_granularities {unknown}; valid: {', '.join(GRANULARITIES)}")
    audio = await asyncio.to_thread(decode_audio, upload.file.read())
    return Upload(audio, response_format, stream, granularities)


def decode_audio(data: bytes) -> bytes:
    """Any file libsndfile reads, as the model's PCM; raises :class:`BadUpload`."""
    import soundfile

    if not data:
        raise BadUpload("the audio file is empty")
    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise BadUpload(f"cannot decode the audio ({exc}); send WAV, FLAC, Ogg (Vorbis or Opus) or MP3")\
            from None
    if not len(samples):
        raise BadUpload("the audio file holds no samples")
    mono = samples.mean(axis=1)
    if rate != SAMPLE_RATE:
        mono = resample(mono, rate, SAMPLE_RATE)
    return (np.clip(mono, -1.0, 1.0) * 32767).astype("<i2").tobytes()


class Transcription:
    """One upload through the engine: fed whole, hard reset, interims timed, then the final.

    ``deltas`` yields the text each result appends, and None once the transcript is complete.
    """

    def __init__(self, engine: StreamEngine, upload: Upload) -> None:
        self.engine = engine
        self.upload = upload
        self.timeline = Timeline()
        self.error = ""
        self.deltas: asyncio.Queue[str | None] = asyncio.Queue()
        self.done = asyncio.Event()
        self.stream_id = engine.open(self._deliver, asyncio.get_running_loop())
        audio = upload.audio
        for start in range(0, len(audio), FEED_BYTES):
            engine.feed(self.stream_id, audio[start:start + FEED_BYTES])
        engine.finalize(self.stream_id)

    def _deliver(self, result: Result) -> None:
        if result.kind == "interim":
            delta = self.timeline.interim(result.text, result.heard_ms)
        elif result.kind == "final":
            delta = self.timeline.final(result.text, self.upload.duration_s)
        elif result.kind == "error":
            self.error, delta = result.text, ""
        else:
            return
        if delta:
            self.deltas.put_nowait(delta)
        if result.kind != "interim":
            self.deltas.put_nowait(None)
            self.done.set()

    async def text(self) -> str:
        """The whole transcript, once the final is in."""
        await self.done.wait()
        return self.timeline.text

    def close(self) -> None:
        self.engine.close(self.stream_id)
