"""When a continuous batch may take new segments without making the streams it plays late.

A joining group runs its prompt before the next decoder step, and every running item waits for it.
A stream whose client has little audio left to play then sends its next chunk after that audio has
run out: an audible gap. So joiners wait until every playing stream has buffered enough audio to
absorb the join and the steps to its next chunk, or until the oldest of them has waited
``max_wait_s`` (a batch that never gets ahead of real time must still take new segments).

Pure: the engine passes times in seconds and reports what joins and steps cost.
"""

from __future__ import annotations

from dataclasses import dataclass


class DecayingPeak:
    """A cost estimate that rises to a new larger cost at once and decays slowly towards smaller
    ones: an underestimate makes a stream late, an overestimate only delays a join."""

    def __init__(self, decay: float = 0.9) -> None:
        self.decay = decay
        self.value = 0.0

    def add(self, cost: float) -> None:
        self.value = cost if cost >= self.value else self.decay * self.value + (1 - self.decay) * cost


@dataclass(frozen=True)
class Playing:
    """A running stream's state as its client hears it."""
    buffered_s: float  # audio sent and not yet played (negative: the client has been waiting)
    frames_to_chunk: int  # decoder steps before its next chunk is sent


class Admission:
    def __init__(self, max_wait_s: float) -> None:
        self.max_wait_s = max_wait_s
        self.join = DecayingPeak()
        self.step = DecayingPeak()

    def allows(self, playing: list[Playing], waited_s: float) -> bool:
        """Whether segments that have waited up to ``waited_s`` join before the next step."""
        if not playing or waited_s >= self.max_wait_s:
            return True
        return all(p.buffered_s >= self.join.value + p.frames_to_chunk * self.step.value for p in playing)
