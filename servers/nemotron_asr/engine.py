"""The engine: one thread owns the model and steps every ready stream in shared batches.

Connections talk to it through thread-safe calls (``open``/``feed``/``finalize``/``close``) that only
enqueue commands; the engine thread applies them in order. Each tick runs one batch: the streams with
a complete chunk of the most urgent step kind (hard resets first). While the GPU runs it, the engine
applies the commands that came in and prepares the next batch from the other streams' audio, so
neither a step's features nor a late hard reset leaves the GPU idle (``look_ahead``); once the step's
tokens are decoded, that next batch is launched before the step's results are made and handed out,
so the GPU runs it meanwhile. A final batch prepared so takes in the finals of its kind that came in
until its launch. Results go back through each stream's ``deliver`` callback: on the engine
thread, or on the stream's event loop when it opened with one (``interface.hand_over``: one
cross-thread hand-off per loop and step).

A hard reset (finalize) covers exactly the audio fed before it: audio or resets that arrive while a
stream is still finishing an utterance wait in that stream's backlog and start the next utterance.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from loguru import logger
from nemotron_common.devices import index_tensor

from .decoder import UtteranceText
from .featurizer import FrameRequest
from .interface import Result, StreamCommands, hand_over
from .model import StepOutput, StreamingModel

FINAL_KINDS = ("final", "final_first")
KIND_ORDER = (*FINAL_KINDS, "first", "steady")  # finals first: time to final is the latency users feel


@dataclass
class _Stream:
    id: int
    deliver: Callable[[Result], None]
    loop: asyncio.AbstractEventLoop | None = None  # where ``deliver`` runs (None: engine thread)
    slot: int = -1
    pcm: bytearray = field(default_factory=bytearray)  # the utterance's fed 16-bit PCM still needed
    origin: int = 0  # absolute index of pcm's first sample within the utterance
    total: int = 0
    consumed: int = 0  # mel frames already given to the encoder
    started: bool = False
    words: UtteranceText | None = None  # the utterance's text, grown token by token (None before any)
    text: str = ""
    finalizing: bool = False
    backlog: deque = field(default_factory=deque)


@dataclass
class _Step:
    stream: _Stream
    kind: str
    first: int
    count: int


@dataclass
class _Batch:
    """One batch's steps with their features, prepared and waiting for the model."""
    kind: str
    steps: list[_Step]
    features: torch.Tensor
    lengths: torch.Tensor
    prepare_s: float  # how long preparing took (the features phase of the step's times)
    times: list[float] = field(default_factory=list)


@dataclass
class _Running:
    """A launched batch: its encoder step is queued on the GPU, its decoding not yet done."""
    batch: _Batch
    output: StepOutput


class StepStats:
    """Per step kind: steps, streams stepped, and milliseconds in each phase (for /health)."""

    PHASES = ("features", "encoder", "decoder", "results")

    def __init__(self) -> None:
        self.kinds: dict[str, dict[str, float]] = {}

    def add(self, kind: str, streams: int, times: list[float]) -> None:
        entry = self.kinds.setdefault(kind, {"steps": 0, "streams": 0, **{p: 0.0 for p in self.PHASES}})
        entry["steps"] += 1
        entry["streams"] += streams
        for phase, start, end in zip(self.PHASES, times, times[1:], strict=False):
            entry[phase] += (end - start) * 1000

    def totals(self) -> dict:
        """Per step kind: steps, streams stepped and milliseconds per phase, cumulative."""
        return {kind: dict(entry) for kind, entry in self.kinds.items()}

    def summary(self) -> dict:
        out = {}
        for kind, e in self.kinds.items():
            steps = max(e["steps"], 1)
            out[kind] = {"steps": int(e["steps"]), "streams": int(e["streams"]),
                         "mean_streams": round(e["streams"] / steps, 1),
                         **{f"{p}_ms": round(e[p] / steps, 2) for p in self.PHASES}}
        return out


class Engine(StreamCommands):
    def __init__(self, model: StreamingModel, max_batch: int, timed_steps: bool = False,
                 look_ahead: bool | None = None) -> None:
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self.model = model
        self.max_batch = max_batch
        # Prepare the next batch while the current one runs, except for eager steps on a GPU: they
        # cost tens of milliseconds of kernel launches whatever their size (H200, 512 streams: p95
        # 312 ms with look-ahead, 197 ms in run 11, planned per tick), so there the next batch is
        # planned after the step, with every stream that became ready meanwhile.
        eager_on_gpu = model.device.type == "cuda" and not model.uses_graphs
        self.look_ahead = not eager_on_gpu if look_ahead is None else look_ahead
        self._held: set[int] = set()  # streams in a prepared or running batch
        self._closes_waiting: deque = deque()  # closes of held streams, applied once released
        self._streams: dict[int, _Stream] = {}
        # Streams with a hard reset to serve: checked between a step's decoding and the next launch,
        # while the GPU waits, so not found by a walk over every stream.
        self._finalizing: set[int] = set()
        self._outgoing: list[tuple[_Stream, Result]] = []  # results not yet handed to their streams
        self._ids = itertools.count(1)
        self._thread = threading.Thread(target=self._run, name="asr-engine", daemon=True)
        self._stop = False
        self.failed = threading.Event()
        self.heartbeat = time.monotonic()
        self.stats = StepStats()
        # Waiting for the GPU after each phase makes the per-phase times exact but adds host syncs
        # to every step, so it is for benchmarks only.
        self.timed_steps = timed_steps

    # --- called from any thread -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop = True
        self.enqueue("wake", 0)
        self._thread.join(timeout)

    def enqueue(self, action: str, stream_id: int, payload=None) -> None:
        self._commands.put((action, stream_id, payload))

    def open(self, deliver: Callable[[Result], None], loop: asyncio.AbstractEventLoop | None = None) -> int:
        """A new stream; its results go to ``deliver``, called on ``loop`` if given, else on the
        engine thread."""
        stream_id = next(self._ids)
        self.enqueue("open", stream_id, (deliver, loop))
        return stream_id

    def alive(self, stall_s: float = 30.0) -> bool:
        return not self.failed.is_set() and time.monotonic() - self.heartbeat < stall_s

    @property
    def steps(self) -> dict:
        """Per step kind: counts and mean phase times (for /health)."""
        return self.stats.summary()

    @property
    def step_totals(self) -> dict:
        """Per step kind: cumulative counts and phase milliseconds (for /metrics)."""
        return self.stats.totals()

    @property
    def gpu_memory_bytes(self) -> int:
        from nemotron_common.metrics import cuda_memory_reserved

        return cuda_memory_reserved()

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    # --- engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            with torch.inference_mode():
                running: _Running | None = None
                while not self._stop:
                    running = self._tick(running)
                    self.heartbeat = time.monotonic()
        except Exception as exc:  # noqa: BLE001 - any failure here is fatal for the service
            logger.opt(exception=exc).critical(f"ASR engine failed: {exc}")
            self.failed.set()
            for stream in list(self._streams.values()):
                self._outgoing.append((stream, Result("error", f"speech recognition engine failed: {exc}")))
            self._hand_over()

    def _tick(self, running: _Running | None) -> _Running | None:
        """Finish the running step (launching one if none runs); return the step launched after it
        if look-ahead prepared one."""
        self._take_commands(block=False)
        if running is None:
            batch = self._prepare_next()
            if batch is None:
                self._hand_over()
                self._take_commands(block=True)
                return None
            running = self._launch(batch)
        following = None
        if self.look_ahead:
            # While the GPU runs it, take the commands that came in and prepare the next batch from
            # the other streams, so a final that arrives now does not wait for its features after
            # this step.
            self._take_commands(block=False)
            following = self._prepare_next()
        emitted = self._decode(running)
        launched = None
        if following is not None:
            # The GPU is done with this step: give it the next one before making this one's results
            # (in a burst of hard resets a step's results took as long as a quarter of its encoder).
            self._take_commands(block=False)
            following = self._latest(following)
            launched = self._launch(following) if following else None
        self._deliver(running.batch, emitted)
        self._release(running.batch)
        self._hand_over()
        return launched

    def _latest(self, batch: _Batch) -> _Batch | None:
        """A prepared batch as it should launch now: dropped if a hard reset came in since (its final
        goes first), grown by the finals of its kind that came in since if it is a final batch."""
        if batch.kind not in FINAL_KINDS:
            if self._finalizing_outside(batch):
                self._release(batch)
                return None
            return batch
        return self._grow(batch)

    def _release(self, batch: _Batch) -> None:
        """The batch is done with (run or dropped): closes that waited for its streams apply now."""
        self._held.difference_update(step.stream.id for step in batch.steps)
        waiting, self._closes_waiting = self._closes_waiting, deque()
        for command in waiting:
            self._apply(*command)

    def _take_commands(self, block: bool) -> None:
        """Apply waiting commands, waiting up to a second for one if ``block``."""
        try:
            command = self._commands.get(timeout=1.0) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._apply(*command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return

    def _apply(self, action: str, stream_id: int, payload) -> None:
        if action == "open":
            stream = _Stream(stream_id, *payload)
            if not self.model.pool.free:  # the transport's session limit should make this unreachable
                self._outgoing.append((stream, Result("error", "no free stream slot; try again later")))
                return
            stream.slot = self.model.pool.acquire()
            self.model.reset_streams([stream.slot])
            self._streams[stream_id] = stream
            return
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if action == "close":
            if stream_id in self._held:  # in a prepared or running step: free the slot after it
                self._closes_waiting.append((action, stream_id, payload))
                return
            self.model.pool.release(stream.slot)
            del self._streams[stream_id]
            self._finalizing.discard(stream_id)
        elif stream.finalizing:
            stream.backlog.append((action, payload))
        elif action == "audio":
            stream.pcm += payload
            stream.total += len(payload) // 2
        elif action == "finalize":
            stream.finalizing = True
            self._finalizing.add(stream_id)
        elif action == "current":
            self._outgoing.append((stream, Result("current", stream.text, self._audio_ms(stream))))

    def _next_step(self, stream: _Stream) -> _Step | None:
        featurizer, model = self.model.featurizer, self.model
        if not stream.started:
            if stream.total >= featurizer.samples_needed(0, model.first_frames):
                return _Step(stream, "first", 0, model.first_frames)
        elif stream.total >= featurizer.samples_needed(stream.consumed, model.shift):
            return _Step(stream, "steady", stream.consumed - model.pre, model.pre + model.shift)
        if not stream.finalizing:
            return None
        end = self.model.featurizer.frames_in(stream.total)
        if end <= stream.consumed:
            return _Step(stream, "done", 0, 0)
        if not stream.started:
            return _Step(stream, "final_first", 0, end)
        return _Step(stream, "final", stream.consumed - model.pre, model.pre + end - stream.consumed)

    def _ready_steps(self, streams: list[_Stream] | None = None) -> dict[str, list[_Step]]:
        """Each kind's ready steps of the streams no batch holds (of ``streams`` if given, else of
        all). Utterances that ended with no frames left to encode are finished here."""
        by_kind: dict[str, list[_Step]] = {}
        for stream in self._streams.values() if streams is None else streams:
            if stream.id not in self._held and (step := self._next_step(stream)):
                by_kind.setdefault(step.kind, []).append(step)
        if done := by_kind.pop("done", None):
            self._finish_utterances([step.stream for step in done])
        return by_kind

    def _prepare_next(self) -> _Batch | None:
        """The most urgent kind's ready steps as a batch with its features, or None if no stream
        is ready; streams held by another batch wait for it."""
        by_kind = self._ready_steps()
        kind = next((kind for kind in KIND_ORDER if kind in by_kind), None)
        return self._prepare(kind, by_kind[kind][:self.max_batch]) if kind else None

    def _grow(self, batch: _Batch) -> _Batch:
        """A final batch prepared while the last step ran, joined by the finals of its kind that
        came in since (their features only). Hard resets that arrive over a few milliseconds, as
        when many streams end together, then go in one step instead of waiting for the next."""
        finalizing = [self._streams[stream_id] for stream_id in self._finalizing]
        more = self._ready_steps(finalizing).get(batch.kind, [])[:self.max_batch - len(batch.steps)]
        if not more:
            return batch
        extra = self._prepare(batch.kind, more)
        return _Batch(batch.kind, batch.steps + extra.steps, torch.cat([batch.features, extra.features]),
                      torch.cat([batch.lengths, extra.lengths]), batch.prepare_s + extra.prepare_s)

    def _finalizing_outside(self, batch: _Batch) -> bool:
        """Whether a stream not in ``batch`` has a hard reset to serve."""
        if not self._finalizing:
            return False
        inside = {step.stream.id for step in batch.steps}
        return any(stream_id not in inside for stream_id in self._finalizing)

    def _prepare(self, kind: str, steps: list[_Step]) -> _Batch:
        started = time.perf_counter()
        requests = []
        for step in steps:
            self._held.add(step.stream.id)
            requests.append(FrameRequest(step.stream.pcm, step.stream.origin, step.stream.total,
                                         step.first, step.count))
        features = self.model.featurizer.frames(requests, self.model.kinds[kind].frames)
        lengths = index_tensor([step.count for step in steps], self.model.device)
        if self.timed_steps:
            self.model.synchronize()
        return _Batch(kind, steps, features, lengths, time.perf_counter() - started)

    def _launch(self, batch: _Batch) -> _Running:
        batch.times = [time.perf_counter() - batch.prepare_s, time.perf_counter()]
        output = self.model.encode(batch.kind, batch.features, batch.lengths,
                                   [step.stream.slot for step in batch.steps])
        if self.timed_steps:
            self.model.synchronize()
        batch.times.append(time.perf_counter())
        return _Running(batch, output)

    def _decode(self, running: _Running) -> list[list[int]]:
        """The tokens each stream of the step emitted (waits for the GPU)."""
        emitted = self.model.decode(running.output)
        running.batch.times.append(time.perf_counter())
        return emitted

    def _deliver(self, batch: _Batch, emitted: list[list[int]]) -> None:
        """Turn a decoded step's new tokens into results."""
        started = time.perf_counter()
        kind, steps = batch.kind, batch.steps
        for step, new_tokens in zip(steps, emitted, strict=True):
            stream = step.stream
            stream.started = True
            stream.consumed = step.first + step.count
            text = stream.text
            if new_tokens:
                if stream.words is None:
                    stream.words = self.model.decoder.new_text()
                text = stream.words.add(new_tokens)
            if kind in FINAL_KINDS:
                stream.text = text
                continue
            self._drop_used_audio(stream)
            if text != stream.text:
                stream.text = text
                self._outgoing.append((stream, Result("interim", text, self._audio_ms(stream),
                                                            self._heard_ms(stream))))
        if kind in FINAL_KINDS:
            self._finish_utterances([step.stream for step in steps])
        # the results phase alone: a step launched since ran between decoding and this
        batch.times.append(batch.times[-1] + time.perf_counter() - started)
        self.stats.add(kind, len(steps), batch.times)

    def _hand_over(self) -> None:
        """Deliver the results made so far: directly, or in one hand-off per event loop."""
        if not self._outgoing:
            return
        outgoing, self._outgoing = self._outgoing, []
        hand_over((stream.deliver, stream.loop, result) for stream, result in outgoing)

    def _drop_used_audio(self, stream: _Stream) -> None:
        keep_from = self.model.featurizer.oldest_sample_needed(stream.consumed - self.model.pre)
        if keep_from > stream.origin:
            del stream.pcm[:2 * (keep_from - stream.origin)]
            stream.origin = keep_from

    def _audio_ms(self, stream: _Stream) -> float:
        return stream.total * 1000.0 / self.model.featurizer.sample_rate

    def _heard_ms(self, stream: _Stream) -> float:
        featurizer = self.model.featurizer
        return stream.consumed * featurizer.hop * 1000.0 / featurizer.sample_rate

    def _finish_utterances(self, streams: list[_Stream]) -> None:
        """Send the finals first (that is the latency users feel), then start fresh utterances."""
        for stream in streams:
            self._outgoing.append((stream, Result("final", stream.text, self._audio_ms(stream))))
        self._hand_over()
        self.model.reset_streams([stream.slot for stream in streams])
        for stream in streams:
            self._streams[stream.id] = _Stream(stream.id, stream.deliver, stream.loop, slot=stream.slot)
            self._finalizing.discard(stream.id)
            for action, payload in stream.backlog:
                self._apply(action, stream.id, payload)
