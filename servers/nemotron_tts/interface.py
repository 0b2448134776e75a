"""What the TTS engine and its clients exchange: jobs in, audio and completion out.

Light enough for the transport and sessions, which never import torch: a job's model input is
opaque here (the catalog makes it, the engine reads it).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class RequestError(ValueError):
    """A request the client can fix; the message says how."""


@dataclass(frozen=True)
class Preset:
    first_frames: int  # frames before the first audio chunk is sent: the client's playback cushion
    chunk_frames: int  # frames per later chunk


# At 21.5 codec frames per second one frame is ~46 ms of audio. Smoothness comes from the cushion
# before playback starts. Later chunks trade the other way: each codec call costs about the same
# however few frames it decodes (it is launch-bound), so one call per frame slows generation (H200:
# real-time factor 0.64 -> 1.0 with CFG), while big chunks make the client wait.
PRESETS = {
    "aggressive": Preset(first_frames=1, chunk_frames=2),
    "balanced": Preset(first_frames=3, chunk_frames=4),
    "conservative": Preset(first_frames=8, chunk_frames=8),
}
MODES = ("stream", "batch")


@dataclass(eq=False)  # jobs are compared and hashed by identity
class Job:
    chunks: list  # the model input of each sentence chunk (tensors, made by the catalog)
    speaker: int
    client: object  # jobs of one client run one at a time
    on_audio: Callable[[bytes], None]  # 16-bit PCM, called on the engine thread
    on_done: Callable[[float, str | None], None]  # audio ms sent, error message
    preset: Preset | None = None  # None: batch mode, audio sent whole at the end
    cancelled: threading.Event = field(default_factory=threading.Event)
    sent_bytes: int = 0
    arrived: float = field(default_factory=time.monotonic)  # when its text came in
    first_audio_at: float | None = None  # when its first audio was sent: its client's playback starts
