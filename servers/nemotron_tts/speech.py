"""``POST /v1/audio/speech``: one request's job, its audio streamed into the HTTP body as it is made.

The status line waits for the first audio (or the failure), so a request that fails before any
audio gets an error status and never ``200``. Once audio has gone out, a later failure can only
break the connection: the client sees a truncated chunked body, never a short body that looks whole.
A client that goes away cancels its job (aiohttp cancels the handler), freeing its batch row.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TYPE_CHECKING

from loguru import logger

from .interface import PRESETS, Job

if TYPE_CHECKING:
    from .catalog import Prepared
    from .metrics import TTSMetrics

STREAM_PRESET = PRESETS["balanced"]
UNKNOWN_SIZE = 0xFFFFFFFF  # what streaming WAV writers put where the sizes go


class SpeechRequest:
    """The job of one HTTP request and its audio pieces, delivered on the event loop in order."""

    def __init__(self, prepared: Prepared, stream: bool, metrics: TTSMetrics | None = None) -> None:
        call = asyncio.get_running_loop().call_soon_threadsafe
        self.metrics = metrics
        self.pieces: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.error: str | None = None
        self.finished = asyncio.Event()
        self.audio_bytes = 0
        self.job = Job(prepared.chunks, prepared.speaker, client=self,
                       on_audio=lambda pcm: call(self._audio, pcm),
                       on_done=lambda _ms, error: call(self._done, error),
                       preset=STREAM_PRESET if stream else None)

    def _audio(self, pcm: bytes) -> None:
        if self.metrics and not self.audio_bytes:
            self.metrics.first_chunk("http", self.job.arrived)
        self.audio_bytes += len(pcm)
        self.pieces.put_nowait(pcm)

    def _done(self, error: str | None) -> None:
        if error is None and self.job.cancelled.is_set():
            error = "synthesis was cancelled: the server is shutting down"
        elif error is None and not self.audio_bytes:
            error = "the model produced no audio for this text"
        self.error = error
        if self.metrics:
            outcome = "cancelled" if self.job.cancelled.is_set() else "failed" if error else "complete"
            self.metrics.outcomes.labels("http", outcome).inc()
        self.finished.set()
        self.pieces.put_nowait(None)

    async def whole(self) -> bytes:
        pieces = []
        while (piece := await self.pieces.get()) is not None:
            pieces.append(piece)
        return b"".join(pieces)

    def cancel(self) -> None:
        self.job.cancelled.set()  # no-op once finished; stops the work when the client went away


def streaming_wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say "unknown", for a body of PCM that follows it."""
    return (b"RIFF" + struct.pack("<I", UNKNOWN_SIZE) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", UNKNOWN_SIZE - 36))


def log_broken(error: str) -> None:
    logger.warning(f"speech request failed after its audio had started; closing its connection: {error}")
