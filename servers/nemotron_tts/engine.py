"""The one thread that owns the TTS model and schedules the work of every client.

Jobs (one text segment each) wait in a FIFO; each client has at most one job in the engine at a time
(its session submits the next segment when one completes). By default it takes the oldest jobs as
one fixed batch through NeMo's loop. A long text of several sentence chunks, which NeMo generates
with history carried from chunk to chunk, runs alone a chunk at a time, and the jobs that wait get a
batch between its chunks. With ``continuous`` (and the static decoder step) waiting jobs join the
running batch before every decoder step, up to ``max_batch``, and leave it at their own last frame;
a long text runs a chunk at a time there too, while the batch is empty, and the batch that the jobs
waiting form between two chunks takes no one else until it ends. Frames are decoded to audio as they
arrive: a ``stream`` job sends a chunk as soon as its preset's frame count is ready, a ``batch`` job
holds its chunks and sends its audio whole when its last frame is made, and every job completes
(``segment_complete``) at its own last frame.
Cancelling a job stops its audio at once and its generation at the next decoder step.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from loguru import logger

from .admission import Admission, Playing
from .audio import duration_ms, to_pcm16
from .codec import StreamDecoder
from .codec_states import GRAPH_FRAMES
from .interface import MODES, PRESETS, Job, Preset
from .model import SpeechModel, Utterance

__all__ = ["MODES", "PRESETS", "Engine", "Job", "Preset"]


# How a batch job's audio is cut. It is decoded as its frames arrive, like a stream's, and held until
# its last frame: decoded whole at the end, an utterance took the codec's activations for all its
# frames at once, which set the memory a TTS server keeps (bench/results/memory-h200-run6.md), and
# stalled every other stream for that call. Chunks of the longest captured length replay codec graphs.
BATCH_CHUNKS = Preset(first_frames=GRAPH_FRAMES, chunk_frames=GRAPH_FRAMES)


@dataclass(eq=False)
class _Running:
    """A job being generated: its incremental codec decoder and when its next chunk is due."""
    job: Job
    decoder: StreamDecoder
    due: int  # frames the decoder must have before the next chunk is decoded
    ended: bool = False  # its last frame is out
    held: list[bytes] = field(default_factory=list)  # a batch job's audio, sent at its last frame

    @classmethod
    def start(cls, job: Job, decoder: StreamDecoder) -> _Running:
        return cls(job, decoder, (job.preset or BATCH_CHUNKS).first_frames)

    def utterance(self) -> Utterance:
        return Utterance(self.job.chunks, self.job.speaker, self.decoder.push, self.job.cancelled.is_set,
                         on_end=lambda: setattr(self, "ended", True))


@dataclass(eq=False)
class _LongText:
    """A job of several sentence chunks between two of them: its generation waits in ``chunks``."""
    live: list[_Running]  # the job until its last frame is out, then empty
    chunks: Iterator[int]


class Engine:
    def __init__(self, model: SpeechModel, max_batch: int, seed: int = 0, gather_s: float = 0.005,
                 continuous: bool = False, join_wait_s: float = 0.5) -> None:
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
        self.batches = 0  # fixed batches, or continuous decoder steps
        self.batched_jobs = 0
        self.largest_batch = 0
        self.cancelled = 0  # jobs stopped early by their client (or by shutdown)
        self.metrics = None  # a TTSMetrics, told when jobs start and how large each batch is
        self.continuous = None
        self.admission = Admission(join_wait_s)
        self._long: _LongText | None = None  # a long text between two of its chunks
        if continuous and model.static is not None:
            from .continuous import ContinuousBatch

            self.continuous = ContinuousBatch(model)

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
    def gpu_memory_bytes(self) -> int:
        """What this process's caching allocator holds (the same name as the engine process's)."""
        from nemotron_common.metrics import cuda_memory_reserved

        return cuda_memory_reserved()

    @property
    def queued(self) -> int:
        return len(self._jobs)

    def summary(self) -> dict:
        mean = self.batched_jobs / self.batches if self.batches else 0.0
        return {"queued": self.queued, "continuous": self.continuous is not None, "batches": self.batches,
                "mean_batch": round(mean, 2), "largest_batch": self.largest_batch,
                "cancelled": self.cancelled}

    def _take_all(self) -> list[Job]:
        with self._lock:
            jobs = list(self._jobs)
            self._jobs.clear()
        return jobs

    def _next_batch(self, room: int, alone_ok: bool = True) -> list[Job]:
        """The oldest wanted jobs, one per client, at most ``room``; a job of several sentence chunks
        runs alone, and only if ``alone_ok`` (else it and everything after it wait)."""
        if room <= 0:
            return []
        with self._lock:
            batch: list[Job] = []
            clients: set[int] = set()
            for job in list(self._jobs):
                if job.cancelled.is_set():
                    self._jobs.remove(job)
                    self.cancelled += 1
                    job.on_done(0.0, None)
                    continue
                alone = len(job.chunks) > 1
                if alone and (batch or not alone_ok):
                    break  # FIFO: the long text goes next, alone
                if id(job.client) in clients:
                    continue
                batch.append(job)
                clients.add(id(job.client))
                self._jobs.remove(job)
                if alone or len(batch) >= room:
                    break
            return batch

    def _run(self) -> None:
        try:
            if self.continuous is not None:
                self._run_continuous()
            while not self._stop:
                # While a long text is between chunks it holds a codec slot, and another long text waits.
                waiting = self._long is not None
                batch = self._next_batch(self.max_batch - waiting, alone_ok=not waiting)
                if batch and len(batch[0].chunks) > 1:
                    self._start_long(batch[0])
                elif batch:
                    self._generate(batch)
                if self._long is not None:
                    self._next_chunk(self._long)
                elif not batch:
                    self._wake.get()
                    self._gather()
            if self._long is not None:  # stopped between two chunks of a long text: cut it short
                for r in self._long.live:
                    r.job.cancelled.set()
                self._end_long(self._long)
        except Exception as exc:  # noqa: BLE001 - a failure here is fatal for the service
            logger.opt(exception=exc).critical(f"TTS engine failed: {exc}")
            self.failed.set()
            for job in self._take_all():
                job.on_done(0.0, f"speech synthesis engine failed: {exc}")

    def _gather(self) -> None:
        """Woken from idle: let a burst of clients that start together share the first batch.

        A lone segment (a voice agent's usual case) waits a fifth of the gather interval: clients
        that start together arrive well within that of each other. Once a second one has come, it
        waits whole intervals while segments keep arriving (at most five), so a burst is not cut in
        two.
        """
        deadline = time.monotonic() + 5 * self.gather_s
        seen = self.queued
        time.sleep(self.gather_s / 5)
        while self.queued != seen and time.monotonic() < deadline:
            seen = self.queued
            time.sleep(self.gather_s)

    def _run_continuous(self) -> None:
        """Join waiting jobs before each decoder step; a long multi-chunk text runs a chunk at a time
        while the batch is empty, and the jobs that wait join a batch between its chunks, which then
        takes no one else until it is empty (as with fixed batches). Only an idle engine gathers a
        burst first; while a batch runs, a job that arrives joins at the next step that the streams
        playing can afford (``admission``)."""
        batch = self.continuous
        running: list[_Running] = []
        while not self._stop:
            long = self._long is not None  # between two chunks, holding a codec slot
            if long and running:
                room = 0  # the batch between two chunks takes no one else: the long text goes on
            else:
                room = batch.capacity - len(batch) - long if self._may_join(running) else 0
            joining = self._next_batch(room, alone_ok=not running and not long)
            if joining and len(joining[0].chunks) > 1:
                self._start_long(joining[0])
                continue
            if not joining and not running and long:
                self._next_chunk(self._long)
                continue
            if not joining and not running:
                self.busy = False
                self._wake.get()
                self._gather()  # a burst that finds the engine idle starts as one group
                continue
            self.busy, self.heartbeat = True, time.monotonic()
            new = [_Running.start(job, self.model.stream_decoder()) for job in joining]
            if self.metrics and joining:
                self.metrics.started(joining)
            try:
                if new:
                    if self.seed and not running:
                        torch.manual_seed(self.seed)
                    started = time.monotonic()
                    batch.admit([r.utterance() for r in new])
                    running += new
                    running = self._flush(running, [r for r in running if r.ended])  # first audio now
                    self.admission.join.add(time.monotonic() - started)
                started = time.monotonic()
                if running:
                    batch.step()
            except Exception as exc:  # noqa: BLE001 - a failing step fails its jobs, not the service
                failed, running = running + [r for r in new if r not in running], []
                self.continuous = batch = type(batch)(self.model)
                self._isolate(failed, exc)
                continue
            self._count_batch(len(batch))
            running = self._flush(running, [r for r in running if r.ended or r.job.cancelled.is_set()])
            self.admission.step.add(time.monotonic() - started)
            if not running:
                batch.clear()  # cancelled items still in it would hold rows until the next step

    def _may_join(self, running: list[_Running]) -> bool:
        """Whether waiting jobs may join the running batch before its next step."""
        with self._lock:
            oldest = self._jobs[0].arrived if self._jobs else None
        if oldest is None or not running:
            return True
        now = time.monotonic()
        playing = [Playing(r.job.first_audio_at + duration_ms(r.job.sent_bytes, self.model.sample_rate) / 1000
                           - now, max(r.due - r.decoder.ready(), 1))
                   for r in running if r.job.preset and r.job.first_audio_at is not None]
        return self.admission.allows(playing, now - oldest)

    def _generate(self, batch: list[Job]) -> None:
        self.busy, self.heartbeat = True, time.monotonic()
        if self.metrics:
            self.metrics.started(batch)
        self._count_batch(len(batch))
        running = [_Running.start(job, self.model.stream_decoder()) for job in batch]
        live = list(running)

        def on_step() -> None:
            nonlocal live
            self.heartbeat = time.monotonic()
            live = self._flush(live, [r for r in live if r.ended])

        if self.seed:
            torch.manual_seed(self.seed)
        try:
            self.model.generate([r.utterance() for r in running], on_step)
        except Exception as exc:  # noqa: BLE001 - one bad batch must not take the service down
            self._isolate(live, exc)
            return
        finally:
            self.busy = False
        self._flush(live, live)

    def _count_batch(self, size: int) -> None:
        """A fixed batch, a continuous decoder step or a long text's chunk, for /health and metrics."""
        self.batches += 1
        self.batched_jobs += size
        self.largest_batch = max(self.largest_batch, size)
        if self.metrics:
            self.metrics.batch_size.observe(size)

    def _start_long(self, job: Job) -> None:
        if self.metrics:
            self.metrics.started([job])
        running = _Running.start(job, self.model.stream_decoder())

        def on_step() -> None:
            self.heartbeat = time.monotonic()
            long.live = self._flush(long.live, [r for r in long.live if r.ended])

        long = _LongText([running], self.model.generate_chunks([running.utterance()], on_step))
        self._long = long

    def _next_chunk(self, long: _LongText) -> None:
        """One more chunk of the long text; after its last, or once its client cancels, it is done."""
        if not long.live or long.live[0].job.cancelled.is_set():
            self._end_long(long)
            return
        self.busy, self.heartbeat = True, time.monotonic()
        self._count_batch(1)
        if self.seed:  # each chunk, so that its audio does not depend on the batches run in between
            torch.manual_seed(self.seed)
        try:
            remaining = next(long.chunks)
        except Exception as exc:  # noqa: BLE001 - one bad text must not take the service down
            self._long = None
            self._isolate(long.live, exc)
            return
        finally:
            self.busy = False
        if not remaining:
            self._end_long(long)

    def _end_long(self, long: _LongText) -> None:
        self._long = None
        long.chunks.close()
        self._flush(long.live, long.live)

    def _isolate(self, running: list[_Running], exc: Exception) -> None:
        """A failed batch fails only the item that broke it: every job that has sent no audio yet
        runs again alone (so a retry can never repeat audio a client already has); a job that has,
        or one that failed alone, gets the error."""
        retry = [r for r in running if len(running) > 1 and not r.job.sent_bytes
                 and not r.job.cancelled.is_set() and not _fatal(exc)]
        self._fail([r for r in running if r not in retry], exc)
        if retry:
            logger.warning(f"retrying {len(retry)} segments of the failed batch one at a time")
        for r in retry:
            r.decoder.close()
            self._generate([r.job])

    def _fail(self, running: list[_Running], exc: Exception) -> None:
        if running:
            logger.opt(exception=exc).error(f"generation failed for {len(running)} segments: {exc}")
        for r in running:
            r.decoder.close()
            r.job.on_done(0.0, f"speech generation failed: {exc}")
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        elif _fatal(exc):
            raise exc  # the CUDA context is unusable: fail the engine, so systemd restarts the service

    def _flush(self, running: list[_Running], final: list[_Running]) -> list[_Running]:
        """Decode every job's due chunk and the rest of each job in ``final``, in one codec call;
        send streamed chunks and the whole audio of finished batch jobs, then complete those;
        returns the jobs still running."""
        windows = []
        for r in running:
            if r.job.cancelled.is_set():
                continue
            if r in final:
                windows.append((r, r.decoder.window(final=True)))
            elif r.decoder.ready() >= r.due:
                r.due = (r.job.preset or BATCH_CHUNKS).chunk_frames
                windows.append((r, r.decoder.window()))
        windows = [(r, window) for r, window in windows if window is not None]
        self._decode_windows([r for r, _ in windows], [window for _, window in windows])
        for r in final:
            if r.held and not r.job.cancelled.is_set():
                self._send(r.job, b"".join(r.held))
            r.decoder.close()
            self.cancelled += r.job.cancelled.is_set()
            r.job.on_done(duration_ms(r.job.sent_bytes, self.model.sample_rate), None)
        return [r for r in running if r not in final]

    def _decode_windows(self, running: list[_Running], windows: list) -> None:
        for r, audio in zip(running, self.model.codec.decode(windows), strict=True):
            if not audio.numel():
                continue
            if r.job.preset:
                self._send(r.job, to_pcm16(audio))
            else:
                r.held.append(to_pcm16(audio))

    @staticmethod
    def _send(job: Job, pcm: bytes) -> None:
        if job.first_audio_at is None:
            job.first_audio_at = time.monotonic()
        job.sent_bytes += len(pcm)
        job.on_audio(pcm)


def _fatal(exc: Exception) -> bool:
    """A CUDA error (not an out-of-memory) leaves the context unusable: nothing may run again."""
    return "CUDA error" in str(exc) and not isinstance(exc, torch.cuda.OutOfMemoryError)
