"""The one thread that owns the TTS model and schedules the work of every client.

Jobs (one text segment each) wait in a FIFO. The engine takes the oldest jobs, at most one per
client so a client with a long queue cannot starve the others, and generates them as one batch.
Frames are decoded to audio as they arrive: a ``stream`` job sends a chunk as soon as its preset's
frame count is ready, a ``batch`` job sends its audio when its last frame is made, and every job is
finished (``segment_complete``) at its own last frame, not at the end of its batch. Cancelling a job
stops its audio at once and stops the batch at the next decoder step once no job in it is wanted.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from loguru import logger

from .audio import duration_ms, to_pcm16
from .codec import decode_windows
from .model import SpeechModel, Utterance


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
    chunks: list[torch.Tensor]
    speaker: int
    client: object  # jobs of one client run one at a time
    on_audio: Callable[[bytes], None]  # 16-bit PCM, called on the engine thread
    on_done: Callable[[float, str | None], None]  # audio ms sent, error message
    preset: Preset | None = None  # None: batch mode, audio sent whole at the end
    cancelled: threading.Event = field(default_factory=threading.Event)
    sent_bytes: int = 0


class Engine:
    def __init__(self, model: SpeechModel, max_batch: int, seed: int = 0, gather_s: float = 0.005) -> None:
        self.model = model
        self.max_batch = max_batch
        self.seed = seed
        self.gather_s = gather_s
        self._jobs: deque[Job] = deque()
        self._wake = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="tts-engine", daemon=True)
        self.failed = threading.Event()
        self.heartbeat = time.monotonic()
        self.busy = False
        self.batches = 0
        self.batched_jobs = 0
        self.largest_batch = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop = True
        for job in self._take_all():
            job.cancelled.set()
        self._wake.put(None)
        self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._lock:
            self._jobs.append(job)
        self._wake.put(None)

    def alive(self, stall_s: float = 120.0) -> bool:
        # A batch of long segments legitimately runs for a while; an idle engine is always alive.
        return not self.failed.is_set() and (not self.busy or time.monotonic() - self.heartbeat < stall_s)

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def summary(self) -> dict:
        mean = self.batched_jobs / self.batches if self.batches else 0.0
        return {"queued": self.queued, "batches": self.batches, "mean_batch": round(mean, 2),
                "largest_batch": self.largest_batch}

    def _take_all(self) -> list[Job]:
        with self._lock:
            jobs = list(self._jobs)
            self._jobs.clear()
        return jobs

    def _next_batch(self) -> list[Job]:
        """The oldest wanted jobs, one per client; a job of several sentence chunks runs alone."""
        with self._lock:
            batch: list[Job] = []
            clients: set[int] = set()
            for job in list(self._jobs):
                if job.cancelled.is_set():
                    self._jobs.remove(job)
                    job.on_done(0.0, None)
                    continue
                alone = len(job.chunks) > 1
                if id(job.client) in clients or (batch and alone):
                    continue
                batch.append(job)
                clients.add(id(job.client))
                self._jobs.remove(job)
                if alone or len(batch) >= self.max_batch:
                    break
            return batch

    def _run(self) -> None:
        try:
            while not self._stop:
                batch = self._next_batch()
                if not batch:
                    self._wake.get()
                    self._gather()
                    continue
                self._generate(batch)
        except Exception as exc:  # noqa: BLE001 - a failure here is fatal for the service
            logger.opt(exception=exc).critical(f"TTS engine failed: {exc}")
            self.failed.set()
            for job in self._take_all():
                job.on_done(0.0, f"speech synthesis engine failed: {exc}")

    def _gather(self) -> None:
        """Woken from idle: let a burst of clients that start together share the first batch.

        Waits one gather interval, and more while segments keep arriving (at most five), so a lone
        segment pays one interval and a burst is not cut in two.
        """
        deadline = time.monotonic() + 5 * self.gather_s
        seen = -1
        while self.queued != seen and time.monotonic() < deadline:
            seen = self.queued
            time.sleep(self.gather_s)

    def _generate(self, batch: list[Job]) -> None:
        self.busy, self.heartbeat = True, time.monotonic()
        self.batches += 1
        self.batched_jobs += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        decoders = [self.model.stream_decoder() for _ in batch]
        targets = [job.preset.first_frames if job.preset else 0 for job in batch]
        finished = [False] * len(batch)
        ending: list[int] = []

        def flush(final: list[int]) -> None:
            """Send every streamed job's due chunk and the rest of each job in ``final``, then finish
            those: one codec call for all of it."""
            due = [i for i, job in enumerate(batch) if job.preset and not finished[i] and i not in final
                   and not job.cancelled.is_set() and decoders[i].ready() >= targets[i]]
            for i in due:
                targets[i] = batch[i].preset.chunk_frames
            windows = [(batch[i], decoders[i].window()) for i in due]
            for i in final:
                finished[i] = True
                if not batch[i].cancelled.is_set():
                    windows.append((batch[i], decoders[i].window(final=True)))
            windows = [(job, window) for job, window in windows if window is not None]
            self._send_windows([job for job, _ in windows], [window for _, window in windows])
            for i in final:
                batch[i].on_done(duration_ms(batch[i].sent_bytes, self.model.sample_rate), None)

        def on_step() -> None:
            self.heartbeat = time.monotonic()
            flush(list(ending))
            ending.clear()

        utterances = [Utterance(job.chunks, job.speaker, decoder.push, job.cancelled.is_set,
                                on_end=lambda i=i: ending.append(i))
                      for i, (job, decoder) in enumerate(zip(batch, decoders, strict=True))]
        if self.seed:
            torch.manual_seed(self.seed)
        try:
            self.model.generate(utterances, on_step)
        except Exception as exc:  # noqa: BLE001 - one bad batch must not take the service down
            logger.opt(exception=exc).error(f"generation failed for a batch of {len(batch)}: {exc}")
            for i, job in enumerate(batch):
                if not finished[i]:
                    job.on_done(0.0, f"speech generation failed: {exc}")
            if isinstance(exc, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            elif "CUDA error" in str(exc):
                raise  # the CUDA context is unusable: fail the engine, so systemd restarts the service
            return
        finally:
            self.busy = False
        flush([i for i in range(len(batch)) if not finished[i]])

    def _send_windows(self, jobs: list[Job], windows: list) -> None:
        for job, audio in zip(jobs, decode_windows(self.model.decode, windows), strict=True):
            if audio.numel():
                pcm = to_pcm16(audio)
                job.sent_bytes += len(pcm)
                job.on_audio(pcm)

