"""The TTS engine in a process of its own (``engine_host = "process"``).

:class:`RemoteEngine` stands in for :class:`~nemotron_tts.engine.Engine` in the service process:
``submit`` sends a job's token ids, voice, preset and arrival time to the child; its audio chunks and
its end come back and reach the job's ``on_audio`` and ``on_done`` (on the receiving thread, as they
would on the engine thread); setting a submitted job's ``cancelled`` forwards the cancel. The catalog's
tokenizer runs in the child too: :meth:`RemoteEngine.tokenize` asks it and waits for the ids, so a
text the model cannot take is still refused before it is queued.
"""

from __future__ import annotations

import functools
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from loguru import logger
from nemotron_common.engine_host import EngineProcess

from .config import TTSConfig
from .interface import Job, RequestError

TOKENIZE_TIMEOUT_S = 30.0


class _ForwardedCancel(threading.Event):
    """A submitted job's ``cancelled``: setting it also tells the child."""

    def __init__(self, forward: Callable[[], None]) -> None:
        super().__init__()
        self._forward = forward

    def set(self) -> None:
        if not self.is_set():
            super().set()
            self._forward()


class RemoteEngine:
    def __init__(self, config: TTSConfig, model_path: Path, codec_path: Path | None) -> None:
        self._host = EngineProcess("nemotron-tts-engine", functools.partial(_load, config, model_path,
                                                                           codec_path),
                                   self._take_results, self._take_stats, self._fail, config.log_level)
        self.failed = self._host.failed
        self.metrics = None  # a TTSMetrics once serving, told of queue waits and batch sizes
        self._ids = itertools.count(1)
        self._jobs: dict[int, Job] = {}
        self._waiting: dict[int, list] = {}  # tokenize requests: [done event, answer]
        self._lock = threading.Lock()
        self._summary: dict = {"queued": 0}
        self.gpu_memory_bytes = 0

    def start(self, progress: Callable[[str, float], None]) -> dict:
        """Start the child and wait until it has loaded and warmed up; returns the model's facts."""
        return self._host.start(progress)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            threading.Event.set(job.cancelled)  # as the in-process engine does; the child is stopping
        self._host.stop(timeout)

    def alive(self) -> bool:
        return self._host.alive(stall_s=120.0)

    @property
    def queued(self) -> int:
        return self._summary.get("queued", 0)

    def summary(self) -> dict:
        return dict(self._summary)

    # --- from any thread ----------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        job_id = next(self._ids)
        was_cancelled = job.cancelled.is_set()
        job.cancelled = _ForwardedCancel(lambda: self._host.send(("cancel", job_id)))
        with self._lock:
            self._jobs[job_id] = job
        chunks = [list(chunk) for chunk in job.chunks]
        self._host.send(("submit", job_id, chunks, job.speaker, id(job.client), job.preset, job.arrived))
        if was_cancelled:
            job.cancelled.set()

    def tokenize(self, text: str, language: str) -> list[list[int]]:
        """The model's token ids of each sentence chunk of ``text``, from the child's tokenizer."""
        request_id, done = next(self._ids), threading.Event()
        self._waiting[request_id] = [done, None]
        self._host.send(("tokenize", request_id, text, language))
        if not done.wait(TOKENIZE_TIMEOUT_S) or self.failed.is_set():
            self._waiting.pop(request_id, None)
            raise RuntimeError("the speech engine did not answer")
        chunks, error = self._waiting.pop(request_id)[1]
        if error:
            raise RequestError(error)
        return chunks

    # --- from the host's receiving thread -----------------------------------------------------
    def _take_results(self, events: list) -> None:
        for event in events:
            kind = event[0]
            if kind == "audio":
                job = self._jobs.get(event[1])
                if job is not None:
                    job.sent_bytes += len(event[2])
                    job.on_audio(event[2])
            elif kind == "done":
                with self._lock:
                    job = self._jobs.pop(event[1], None)
                if job is not None:
                    job.on_done(event[2], event[3])
            elif kind == "tokens":
                waiter = self._waiting.get(event[1])
                if waiter is not None:
                    waiter[1] = (event[2], event[3])
                    waiter[0].set()
            elif kind == "started" and self.metrics:
                for wait_s in event[1]:
                    self.metrics.queue_wait.observe(wait_s)
            elif kind == "batch" and self.metrics:
                self.metrics.batch_size.observe(event[1])

    def _take_stats(self, stats: dict) -> None:
        self._summary, self.gpu_memory_bytes = stats["summary"], stats["gpu_memory_bytes"]

    def _fail(self, failure: str) -> None:
        logger.critical(f"TTS engine failed: {failure}")
        with self._lock:
            jobs, self._jobs = list(self._jobs.values()), {}
        for job in jobs:
            job.on_done(0.0, f"speech synthesis engine failed: {failure}")
        for waiter in list(self._waiting.values()):
            waiter[0].set()


class _Client:
    """A parent client's identity in the child: jobs of one client run one at a time."""


class _MetricsRelay:
    """What the engine tells its metrics, sent to the parent's."""

    def __init__(self, emit: Callable[[object], None]) -> None:
        self.emit = emit
        self.batch_size = self  # the engine calls metrics.batch_size.observe(n)

    def started(self, jobs: list) -> None:
        now = time.monotonic()  # CLOCK_MONOTONIC: the same clock in both processes
        self.emit(("started", [now - job.arrived for job in jobs]))

    def observe(self, size: int) -> None:
        self.emit(("batch", size))


class _ChildEngine:
    def __init__(self, loaded, emit: Callable[[object], None]) -> None:
        self.engine, self.catalog, self.emit = loaded.engine, loaded.catalog, emit
        self.failed = self.engine.failed
        self._jobs: dict[int, Job] = {}
        self._clients: weakref.WeakValueDictionary[int, _Client] = weakref.WeakValueDictionary()
        self.engine.metrics = _MetricsRelay(emit)  # from here on: the warmup's work is not counted

    def apply(self, command: tuple, pipe: int = 0) -> None:  # one pipe: TTS has no workers
        kind = command[0]
        if kind == "submit":
            self._submit(*command[1:])
        elif kind == "cancel":
            job = self._jobs.get(command[1])
            if job is not None:
                job.cancelled.set()
        elif kind == "tokenize":
            self._tokenize(*command[1:])

    def _submit(self, job_id: int, chunks: list, speaker: int, client_key: int, preset,
                arrived: float) -> None:
        import torch

        client = self._clients.get(client_key)
        if client is None:
            client = self._clients[client_key] = _Client()

        def done(ms: float, error: str | None) -> None:
            self._jobs.pop(job_id, None)
            self.emit(("done", job_id, ms, error))

        job = Job([torch.tensor(chunk, dtype=torch.long) for chunk in chunks], speaker, client,
                  on_audio=lambda pcm: self.emit(("audio", job_id, pcm)), on_done=done, preset=preset,
                  arrived=arrived)
        self._jobs[job_id] = job
        self.engine.submit(job)

    def _tokenize(self, request_id: int, text: str, language: str) -> None:
        try:
            chunks = [chunk.tolist() for chunk in self.catalog.tokenize(text, language)]
        except Exception as exc:  # noqa: BLE001 - the request's error, not the engine's
            self.emit(("tokens", request_id, None, f"text cannot be tokenized: {exc}"))
            return
        self.emit(("tokens", request_id, chunks, None))

    def stats(self) -> dict:
        from nemotron_common.metrics import cuda_memory_reserved

        return {"summary": self.engine.summary(), "gpu_memory_bytes": cuda_memory_reserved()}

    def alive(self) -> bool:
        return self.engine.alive()

    def stop(self) -> None:
        self.engine.stop()


def _load(config: TTSConfig, model_path: Path, codec_path: Path | None, progress, emit):
    import sys

    from .loading import load_engine

    # The engine thread keeps the GIL for up to the switch interval whenever another thread asks for
    # it; here the asker is the thread applying the parent's commands, tokenising included, while the
    # parent's event loop waits for the answer. The same 0.5 ms as in a service process.
    sys.setswitchinterval(0.0005)

    loaded = load_engine(config, model_path, codec_path, progress)
    facts = {"sample_rate": loaded.sample_rate, "languages": list(loaded.catalog.languages),
             "device_text": loaded.device_text, "warmup_s": loaded.warmup_s}
    return _ChildEngine(loaded, emit), facts
