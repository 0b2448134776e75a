"""One client connection: protocol events in, engine results out, in order.

The session never touches the model. It forwards audio and resets to the engine and turns the
engine's results (delivered on the engine thread) into protocol messages on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from loguru import logger

from . import protocol

if TYPE_CHECKING:
    from .interface import Result, StreamEngine
    from .metrics import ASRMetrics

# Messages a client may leave unread before its interims are dropped: each interim repeats the
# utterance so far, so a client that catches up loses nothing, and the queue stays bounded by the
# finals and errors, which are few and never dropped.
MAX_UNSENT = 64


class Session:
    def __init__(self, engine: StreamEngine, max_frame_bytes: int, peer: str,
                 metrics: ASRMetrics | None = None) -> None:
        self.engine = engine
        self.peer = peer
        self.metrics = metrics
        self.framer = protocol.AudioFramer(max_frame_bytes)
        self.outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.pending_finals = 0
        self.heard_audio = False  # audio since the last hard reset
        self.finals_done = asyncio.Event()
        self.finals_done.set()
        self.reset_times: list[float] = []
        self.writer: asyncio.Task | None = None  # set by the transport
        self.stream_id = engine.open(self._deliver, self.loop)

    # --- client -> engine -------------------------------------------------------------------
    def on_binary(self, frame: bytes) -> None:
        for event in self.framer.parse(frame):
            self._handle(event)

    def on_text(self, frame: str) -> None:
        self._handle(protocol.parse_text(frame))

    def _handle(self, event: protocol.Event) -> None:
        if isinstance(event, protocol.Audio):
            self.heard_audio = True
            self.engine.feed(self.stream_id, event.pcm)
            if self.metrics:
                self.metrics.audio(len(event.pcm))
        elif isinstance(event, protocol.Reset) and event.finalize:
            self.finalize()
        elif isinstance(event, protocol.Reset):
            self.engine.current(self.stream_id)
        else:
            logger.debug(f"{self.peer}: {event.message}")
            self.outbox.put_nowait(protocol.error_message(event.message))
            if self.metrics:
                self.metrics.errors.labels("bad_message").inc()

    def finalize(self) -> None:
        self.framer.reset()
        self.heard_audio = False
        self.pending_finals += 1
        self.finals_done.clear()
        self.reset_times.append(time.perf_counter())
        self.engine.finalize(self.stream_id)

    # --- engine -> client (on the event loop) ------------------------------------------------
    def _deliver(self, result: Result) -> None:
        if result.kind == "interim":
            if self.outbox.qsize() < MAX_UNSENT:
                self.outbox.put_nowait(protocol.interim_message(result.text))
        elif result.kind == "current":
            self.outbox.put_nowait(protocol.final_message(result.text, finalize=False))
        elif result.kind == "final":
            started = self.reset_times.pop(0) if self.reset_times else time.perf_counter()
            latency_s = time.perf_counter() - started
            latency_ms = round(latency_s * 1000, 1)
            if self.metrics:
                self.metrics.time_to_final.observe(latency_s)
            self.outbox.put_nowait(protocol.final_message(result.text, finalize=True,
                                                          audio_ms=round(result.audio_ms, 1),
                                                          latency_ms=latency_ms))
            self.pending_finals -= 1
            if self.pending_finals == 0:
                self.finals_done.set()
        else:
            self.outbox.put_nowait(protocol.error_message(result.text))
            if self.metrics:
                self.metrics.errors.labels("engine").inc()

    async def drain(self, timeout_s: float) -> None:
        """Finish the utterance in progress so the client gets its final transcript."""
        if self.heard_audio:
            self.finalize()
        try:
            await asyncio.wait_for(self.finals_done.wait(), timeout_s)
        except TimeoutError:
            logger.warning(f"{self.peer}: final transcript not ready within {timeout_s:g} s of shutdown")

    def close(self) -> None:
        self.engine.close(self.stream_id)
        self.outbox.put_nowait(None)
