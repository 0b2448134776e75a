"""The TTS server's Prometheus metrics (``GET /metrics``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from nemotron_common.metrics import Metrics

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class TTSMetrics:
    def __init__(self, state: Callable[[], dict[str, float]]) -> None:
        """``state``: the current sessions, HTTP requests and queued segments, read at scrape time."""
        self.metrics = m = Metrics("tts")
        self.first_audio = m.histogram("first_audio_seconds", "From a text's arrival to its first audio "
                                       "being sent, by endpoint", ("endpoint",))
        self.queue_wait = m.histogram("queue_wait_seconds",
                                      "From a text's arrival to the start of its generation")
        self.batch_size = m.histogram("batch_size", "Segments in each batch (or continuous decoder step)",
                                      buckets=BATCH_BUCKETS)
        self.outcomes = m.counter("segments", "Texts taken for synthesis, by endpoint and outcome "
                                  "(complete, failed, cancelled)", ("endpoint", "outcome"))
        self.errors = m.counter("errors", "Requests and messages refused or failed, by kind", ("kind",))
        self._state = state
        # Set by the service once its engine is loaded (the engine may run in another process); until
        # then a scrape reports nothing held, as ASR's does, and never imports torch here.
        self.gpu_memory: Callable[[], int] = lambda: 0
        m.at_scrape(self._collect)

    def started(self, jobs: list) -> None:
        """A batch (or continuous step's joiners) begins: called on the engine thread."""
        now = time.monotonic()
        for job in jobs:
            self.queue_wait.observe(now - job.arrived)

    def first_chunk(self, endpoint: str, arrived: float) -> None:
        self.first_audio.labels(endpoint).observe(time.monotonic() - arrived)

    def _collect(self) -> Iterable:
        m = self.metrics
        for name, value in self._state().items():
            yield m.gauge(name, {"sessions": "Open WebSocket streams",
                                 "http_requests": "Speech requests over HTTP in progress",
                                 "queued_segments": "Segments waiting for the engine"}[name], value)
        yield m.gauge("gpu_memory_reserved_bytes", "GPU memory the engine's allocator holds",
                      self.gpu_memory())
