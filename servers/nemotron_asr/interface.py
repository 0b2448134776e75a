"""What an engine and its clients exchange: commands in, results out.

Light enough for the service process, which serves clients and never loads the model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol


@dataclass
class Result:
    kind: str  # "interim", "final" (hard reset), "current" (soft reset) or "error"
    text: str
    audio_ms: float = 0.0  # audio in the utterance so far
    heard_ms: float = 0.0  # of it, what the model has consumed: where the text so far ends


Deliver = Callable[[Result], None]


def deliver_all(batch: list[tuple[Deliver, Result]]) -> None:
    for deliver, result in batch:
        deliver(result)


def hand_over(results: Iterable[tuple[Deliver, asyncio.AbstractEventLoop | None, Result]]) -> None:
    """Call each ``deliver`` with its result: on the calling thread where no loop is given, else
    on its loop, in one cross-thread hand-off per loop (at 256 streams a final step spent 13 ms
    handing results over one by one)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Deliver, Result]]] = {}
    for deliver, loop, result in results:
        if loop is None:
            deliver(result)
        else:
            by_loop.setdefault(loop, []).append((deliver, result))
    for loop, batch in by_loop.items():
        loop.call_soon_threadsafe(deliver_all, batch)


class StreamCommands:
    """The thread-safe half of an engine's API: every call only enqueues a command, applied in order.
    A subclass says where commands go (``enqueue``): the engine's own queue, or the pipe to the
    engine's process."""

    def enqueue(self, action: str, stream_id: int, payload=None) -> None:
        raise NotImplementedError

    def feed(self, stream_id: int, pcm16: bytes) -> None:
        if len(pcm16) % 2:
            raise ValueError("16-bit PCM comes in whole samples (an even number of bytes)")
        # Kept as 16-bit PCM until a batch's samples reach the device: the caller is usually the
        # event loop, whose every microsecond per frame counts.
        self.enqueue("audio", stream_id, pcm16)

    def finalize(self, stream_id: int) -> None:
        """Hard reset: a ``final`` result for all audio fed so far, then a fresh utterance."""
        self.enqueue("finalize", stream_id)

    def current(self, stream_id: int) -> None:
        """Soft reset: a ``current`` result with the text so far; nothing changes."""
        self.enqueue("current", stream_id)

    def close(self, stream_id: int) -> None:
        self.enqueue("close", stream_id)


class StreamEngine(Protocol):
    """What sessions see of the engine: the engine itself, or its proxy in the service process
    (``engine_process.RemoteEngine``). Every call only enqueues; results come through ``deliver``."""

    def open(self, deliver: Deliver, loop: asyncio.AbstractEventLoop | None = None) -> int: ...

    def feed(self, stream_id: int, pcm16: bytes) -> None: ...

    def finalize(self, stream_id: int) -> None: ...

    def current(self, stream_id: int) -> None: ...

    def close(self, stream_id: int) -> None: ...
