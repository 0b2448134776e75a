"""The ASR server's Prometheus metrics (``GET /metrics``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from nemotron_common.metrics import Metrics

from .protocol import BYTES_PER_SAMPLE, SAMPLE_RATE


class ASRMetrics:
    def __init__(self, sessions: Callable[[], int], max_sessions: int, engine: Callable[[], object]) -> None:
        self.metrics = m = Metrics("asr")
        self.time_to_final = m.histogram("time_to_final_seconds",
                                         "From a client's hard reset to its final transcript being queued")
        self.transcription_seconds = m.histogram(
            "transcription_seconds",
            "From an uploaded file's arrival to its transcript (POST /v1/audio/transcriptions)",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0))
        self.errors = m.counter("errors", "Error messages sent to clients, by kind", ("kind",))
        self._audio = m.counter("audio_seconds", "Audio received from clients")
        self._sessions, self._max_sessions, self._engine = sessions, max_sessions, engine
        m.at_scrape(self._collect)

    def audio(self, pcm_bytes: int) -> None:
        self._audio.inc(pcm_bytes / BYTES_PER_SAMPLE / SAMPLE_RATE)

    def _collect(self) -> Iterable:
        m = self.metrics
        yield m.gauge("sessions", "Open streams", self._sessions())
        yield m.gauge("max_sessions", "Streams the server takes at most (max_sessions)", self._max_sessions)
        engine = self._engine()
        if engine is None:
            return
        yield m.gauge("gpu_memory_reserved_bytes", "GPU memory the engine process's allocator holds",
                      engine.gpu_memory_bytes)
        steps = m.counter_family("steps", "Batched engine steps, by step kind", ["kind"])
        streams = m.counter_family("stepped_streams", "Streams advanced by engine steps, by step kind",
                                   ["kind"])
        phases = m.counter_family("step_phase_seconds", "Time engine steps spent in each phase",
                                  ["kind", "phase"])
        for kind, totals in engine.step_totals.items():
            counts = dict(totals)
            steps.add_metric([kind], counts.pop("steps"))
            streams.add_metric([kind], counts.pop("streams"))
            for phase, ms in counts.items():  # the rest: milliseconds per phase
                phases.add_metric([kind, phase], ms / 1000)
        yield from (steps, streams, phases)
