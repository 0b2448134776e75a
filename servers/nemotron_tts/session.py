"""One WebSocket client's streams: the message contract of ``/ws/tts/stream``.

Runs on the event loop. Segments of a stream are synthesised one after another (FIFO); the
engine's callbacks come back through ``call_soon_threadsafe``, and audio of a job that is no longer
the current one is dropped right here, on the loop, before anything later can be queued. So a
cancelled stream's audio can never follow the next ``stream_created``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import protocol
from .interface import PRESETS, Job, RequestError

if TYPE_CHECKING:
    from .catalog import Catalog
    from .engine import Engine
    from .metrics import TTSMetrics

MAX_QUEUED_SEGMENTS = 256
_stream_numbers = itertools.count(1)


@dataclass
class Segment:
    number: int
    job: Job
    spoke: bool = False  # its first audio went out


class StreamSession:
    def __init__(self, engine: Engine, catalog: Catalog, send: Callable[[str | bytes], None],
                 metrics: TTSMetrics | None = None) -> None:
        self.engine = engine
        self.catalog = catalog
        self.metrics = metrics
        self._send = send
        self._loop = asyncio.get_running_loop()
        self.voice: str | None = None
        self.language: str | None = None
        self.default_mode = "stream"
        self.stream_id: str | None = None
        self.queue: deque[Segment] = deque()
        self.current: Segment | None = None
        self.closing = False
        self.segments_accepted = 0  # numbers the stream's segments; a failed one keeps its number
        self.segments_made = 0
        self.total_audio_ms = 0.0
        self.idle = asyncio.Event()
        self.idle.set()

    # -- client messages -------------------------------------------------------------------------

    def receive(self, raw: str | bytes) -> None:
        handlers = {"init": self._init, "text": self._text, "close": self._close, "cancel": self._cancel,
                    "ping": self._ping}
        try:
            kind, message = protocol.parse(raw)
            handlers[kind](message)
        except RequestError as exc:
            self._refuse(str(exc))

    def _init(self, message: dict) -> None:
        self.cancel()
        voice, language = message.get("voice"), message.get("language")
        self.catalog.voice(voice)
        self.catalog.language(language)
        mode = protocol.mode(message.get("default_mode"), "default_mode", "stream")
        self.voice, self.language, self.default_mode = voice, language, mode
        self._open_stream()

    def _text(self, message: dict) -> None:
        mode = protocol.mode(message.get("mode"), "mode", self.default_mode)
        preset_name = protocol.preset(message.get("preset"))
        if len(self.queue) >= MAX_QUEUED_SEGMENTS:
            raise RequestError(f"more than {MAX_QUEUED_SEGMENTS} segments queued; wait for segment_complete")
        prepared = self.catalog.prepare(message.get("text"), self.voice, self.language)
        if self.stream_id is None:
            self._open_stream()
        self.segments_accepted += 1
        number = self.segments_accepted
        job = Job(prepared.chunks, prepared.speaker, self, on_audio=None, on_done=None,
                  preset=PRESETS[preset_name] if mode == "stream" else None)
        call = self._loop.call_soon_threadsafe
        job.on_audio = lambda pcm, job=job: call(self._audio, job, pcm)
        job.on_done = lambda ms, error, job=job: call(self._finished, job, ms, error)
        self.queue.append(Segment(number, job))
        self.idle.clear()
        self._pump()

    def _close(self, _message: dict) -> None:
        if self.stream_id is None:
            self._send(protocol.done_message(0.0, 0))
            return
        self.closing = True
        self._maybe_done()

    def _cancel(self, _message: dict) -> None:
        self.cancel()

    def _ping(self, _message: dict) -> None:
        self._send(protocol.pong_message())

    def cancel(self) -> None:
        """Drop the current stream: stop its generation, its queued segments and any audio in flight."""
        dropped = ([self.current] if self.current else []) + list(self.queue)
        for segment in dropped:
            segment.job.cancelled.set()
        if self.metrics and dropped:
            self.metrics.outcomes.labels("websocket", "cancelled").inc(len(dropped))
        self.current = None
        self.queue.clear()
        self.stream_id = None
        self.closing = False
        self.idle.set()

    # -- engine callbacks (on the loop) ----------------------------------------------------------

    def _audio(self, job: Job, pcm: bytes) -> None:
        if self.current is not None and self.current.job is job and not job.cancelled.is_set():
            if self.metrics and not self.current.spoke:
                self.metrics.first_chunk("websocket", job.arrived)
            self.current.spoke = True
            self._send(pcm)

    def _finished(self, job: Job, audio_ms: float, error: str | None) -> None:
        if self.current is None or self.current.job is not job:
            return  # cancelled: nothing of it may reach the client any more
        segment, self.current = self.current, None
        if self.metrics:
            self.metrics.outcomes.labels("websocket", "failed" if error else "complete").inc()
        if error:
            self._error(f"segment {segment.number}: {error}")
        else:
            self.segments_made += 1
            self.total_audio_ms += audio_ms
            self._send(protocol.segment_complete_message(segment.number, audio_ms))
        self._pump()
        self._maybe_done()

    # -- internals -------------------------------------------------------------------------------

    def _open_stream(self) -> None:
        self.stream_id = f"tts-{next(_stream_numbers):06d}"
        self.segments_accepted, self.segments_made, self.total_audio_ms, self.closing = 0, 0, 0.0, False
        self._send(protocol.stream_created_message(self.stream_id))

    def _pump(self) -> None:
        if self.current is None and self.queue:
            self.current = self.queue.popleft()
            self.engine.submit(self.current.job)
        if self.current is None and not self.queue:
            self.idle.set()

    def _maybe_done(self) -> None:
        if self.closing and self.current is None and not self.queue:
            self._send(protocol.done_message(self.total_audio_ms, self.segments_made))
            self.stream_id, self.closing = None, False

    def _refuse(self, message: str) -> None:
        """An error the client caused (a message the server cannot take)."""
        if self.metrics:
            self.metrics.errors.labels("bad_message").inc()
        self._error(message)

    def _error(self, message: str, fatal: bool = False) -> None:
        self._send(protocol.error_message(message, fatal))
