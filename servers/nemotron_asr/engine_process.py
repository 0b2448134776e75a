"""The engine in a process of its own, so the event loop's per-frame Python never holds its GIL.

At 512 streams the event loop receives about 6,400 audio frames a second, at about 39 µs of Python
each (websockets parsing and asyncio, on a CI core); in one process those bursts interrupt the
engine's own per-step Python. :class:`RemoteEngine` has the engine's thread-safe API (``open``,
``feed``, ``finalize``, ``current``, ``close``); its commands cross to the child in batches over a
pipe, and the child's results come back in batches, one hand-off per event loop as in-process.

The child loads the model, warms up and reports progress the parent turns into sd_notify lines; it
ignores SIGTERM and SIGINT, since the parent drains the sessions first and then stops it, and it
exits when the parent goes away (its end of the pipe closes).
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from loguru import logger

from .config import ASRConfig
from .interface import Result, StreamCommands, hand_over

STATS_INTERVAL_S = 1.0  # the child's heartbeat, with the step statistics for /health


def _take_batch(waiting: queue.SimpleQueue, timeout: float | None = None) -> list:
    """Whatever has queued up, waiting up to ``timeout`` (None: for ever) for the first item; each
    pipe message carries one such batch."""
    try:
        batch = [waiting.get(timeout=timeout)]
    except queue.Empty:
        return []
    while True:
        try:
            batch.append(waiting.get_nowait())
        except queue.Empty:
            return batch


class RemoteEngine(StreamCommands):
    def __init__(self, config: ASRConfig, model_path: Path) -> None:
        super().__init__()
        self.config, self.model_path = config, model_path
        self._ids = itertools.count(1)
        self._streams: dict[int, tuple[Callable[[Result], None], asyncio.AbstractEventLoop | None]] = {}
        self._conn: Connection | None = None
        self._process: multiprocessing.Process | None = None
        self._ready = threading.Event()
        self.device_text = ""
        self.warmup_s = 0.0
        self._progress: Callable[[str, float], None] | None = None
        self.failed = threading.Event()
        self.failure = ""
        self._stopping = False
        self.heartbeat = time.monotonic()
        self.steps: dict = {}  # per step kind: counts and mean phase times (for /health)
        self.step_totals: dict = {}  # per step kind: cumulative counts and phase milliseconds (metrics)
        self.gpu_memory_bytes = 0  # what the engine process's caching allocator holds

    # --- lifecycle ----------------------------------------------------------------------------
    def start(self, progress: Callable[[str, float], None]) -> None:
        """Start the child and wait until it has loaded and warmed up."""
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked into a child
        self._conn, child_end = context.Pipe()
        self._progress = progress
        self._process = context.Process(target=child_main, name="nemotron-asr-engine",
                                        args=(child_end, self.config, self.model_path), daemon=True)
        self._process.start()
        child_end.close()
        threading.Thread(target=self._receive, name="asr-results", daemon=True).start()
        threading.Thread(target=self._send, name="asr-commands", daemon=True).start()
        while not self._ready.wait(0.5):
            if self.failed.is_set():
                raise RuntimeError(self.failure or "the engine process ended while loading")

    def stop(self, timeout: float = 5.0) -> None:
        if self._process is None:
            return
        self._stopping = True
        self._commands.put(None)  # the sender's last message
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)

    def alive(self, stall_s: float = 30.0) -> bool:
        return not self.failed.is_set() and time.monotonic() - self.heartbeat < stall_s

    # --- the engine's API, from any thread ----------------------------------------------------
    def open(self, deliver: Callable[[Result], None], loop: asyncio.AbstractEventLoop | None = None) -> int:
        stream_id = next(self._ids)
        self._streams[stream_id] = (deliver, loop)
        self.enqueue("open", stream_id)
        return stream_id

    def close(self, stream_id: int) -> None:
        super().close(stream_id)
        self._streams.pop(stream_id, None)

    # --- the two pipe threads -----------------------------------------------------------------
    def _send(self) -> None:
        """Forward commands in batches: whatever has queued up while the last batch was sent."""
        while True:
            batch = _take_batch(self._commands)
            stop = None in batch
            if stop:
                batch = batch[:batch.index(None) + 1]
            try:
                self._conn.send(batch)
            except (OSError, ValueError):
                return  # the child is gone; the receiver reports it
            if stop:
                return

    def _receive(self) -> None:
        try:
            while True:
                kind, payload = self._conn.recv()
                self.heartbeat = time.monotonic()
                if kind == "results":
                    self._deliver(payload)
                elif kind == "stats":
                    self.steps, self.step_totals = payload["steps"], payload["totals"]
                    self.gpu_memory_bytes = payload["gpu_memory_bytes"]
                elif kind == "progress":
                    self._progress(*payload)
                elif kind == "ready":
                    self.device_text, self.warmup_s = payload
                    self._ready.set()
                elif kind == "failed":
                    self.failure = payload
                    break
        except (EOFError, OSError):
            if self._stopping:
                return
        if not self.failure:
            self._process.join(1.0)
            self.failure = f"the engine process ended (exit code {self._process.exitcode})"
        logger.critical(f"ASR engine failed: {self.failure}")
        self._deliver([(stream_id, Result("error", f"speech recognition engine failed: {self.failure}"))
                       for stream_id in list(self._streams)])
        self.failed.set()

    def _deliver(self, results: list[tuple[int, Result]]) -> None:
        # A stream may be closed on the event loop meanwhile: its results are dropped.
        targets = [(self._streams.get(stream_id), result) for stream_id, result in results]
        hand_over((*target, result) for target, result in targets if target is not None)


def child_main(conn: Connection, config: ASRConfig, model_path: Path) -> None:
    """The engine process: load, warm up, then apply the parent's commands until told to stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from nemotron_common import heap, logs

    logs.setup(config.log_level)
    from .loading import load_engine

    try:
        engine, device_text, warmup_s = load_engine(
            config, model_path, lambda text, budget_s: conn.send(("progress", (text, budget_s))))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which exits with it
        logger.opt(exception=exc).error(f"loading failed: {exc}")
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    heap.freeze_loaded_objects()
    results: queue.SimpleQueue = queue.SimpleQueue()
    sender = threading.Thread(target=_send_results, args=(conn, engine, results), name="asr-results",
                              daemon=True)
    sender.start()
    conn.send(("stats", _stats(engine)))  # the warmup's steps, counted before any client's
    conn.send(("ready", (device_text, warmup_s)))
    streams: dict[int, int] = {}  # the parent's stream id -> the engine's
    try:
        while True:
            batch = conn.recv()
            for command in batch:
                if command is None:
                    return
                action, stream_id, payload = command
                if action == "open":
                    streams[stream_id] = engine.open(lambda result, sid=stream_id: results.put((sid, result)))
                    continue
                local = streams.get(stream_id)
                if local is None:
                    continue
                engine.enqueue(action, local, payload)  # checked by the parent's StreamCommands
                if action == "close":
                    del streams[stream_id]
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        engine.stop()


def _stats(engine) -> dict:
    from nemotron_common.metrics import cuda_memory_reserved

    return {"steps": engine.stats.summary(), "totals": engine.stats.totals(),
            "gpu_memory_bytes": cuda_memory_reserved()}


def _send_results(conn: Connection, engine, results: queue.SimpleQueue) -> None:
    """Send the engine's results in batches, and its statistics as a heartbeat once a second."""
    next_stats = 0.0
    while True:
        batch = _take_batch(results, STATS_INTERVAL_S)
        try:
            if batch:
                conn.send(("results", batch))
            if not engine.alive():
                stalled = "failed" if engine.failed.is_set() else "stalled"
                conn.send(("failed", f"the engine thread {stalled} (see the log)"))
                return
            if time.monotonic() >= next_stats:
                conn.send(("stats", _stats(engine)))
                next_stats = time.monotonic() + STATS_INTERVAL_S
        except (OSError, ValueError):
            return
