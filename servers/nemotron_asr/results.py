"""What the engine hands back to a stream (light enough for the process that only serves clients)."""

from __future__ import annotations

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
