"""What an engine and its clients exchange: commands in, results out.

Light enough for the service process, which serves clients and never loads the model.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class Result:
    kind: str  # "interim", "final" (hard reset), "current" (soft reset) or "error"
    text: str
    audio_ms: float = 0.0  # audio in the utterance so far


def deliver_all(batch: list[tuple[Callable[[Result], None], Result]]) -> None:
    """Run a batch of deliveries (one cross-thread hand-off carries a whole step's results)."""
    for deliver, result in batch:
        deliver(result)


class StreamCommands:
    """The thread-safe half of an engine's API: every call only enqueues a command, applied in order."""

    def __init__(self) -> None:
        self._commands: queue.SimpleQueue = queue.SimpleQueue()

    def feed(self, stream_id: int, pcm16: bytes) -> None:
        if len(pcm16) % 2:
            raise ValueError("16-bit PCM comes in whole samples (an even number of bytes)")
        # Converted by the engine once per step and stream: the caller is usually the event loop,
        # whose every microsecond per frame counts.
        self._commands.put(("audio", stream_id, pcm16))

    def finalize(self, stream_id: int) -> None:
        """Hard reset: a ``final`` result for all audio fed so far, then a fresh utterance."""
        self._commands.put(("finalize", stream_id, None))

    def current(self, stream_id: int) -> None:
        """Soft reset: a ``current`` result with the text so far; nothing changes."""
        self._commands.put(("current", stream_id, None))

    def close(self, stream_id: int) -> None:
        self._commands.put(("close", stream_id, None))
