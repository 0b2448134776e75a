"""The ASR engine in a process of its own (``engine_host = "process"``, the default).

At 512 streams the event loop receives about 6,400 audio frames a second, at about 39 µs of Python
each (parsing and asyncio, on a CI core); in one process those bursts interrupt the engine's own
per-step Python. :class:`RemoteEngine` has the engine's thread-safe API (``open``, ``feed``,
``finalize``, ``current``, ``close``) over ``nemotron_common.engine_host``: commands cross to the
child in batches, results come back in batches, one hand-off per event loop as in-process.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from loguru import logger
from nemotron_common.engine_host import EngineLink, EngineProcess

from .config import ASRConfig
from .interface import Result, StreamCommands, hand_over


class RemoteEngine(StreamCommands):
    def __init__(self, link: Callable[..., EngineLink]) -> None:
        """``link(on_results, on_stats, on_failure)`` makes this process's link to the engine."""
        self._ids = itertools.count(1)
        self._streams: dict[int, tuple[Callable[[Result], None], asyncio.AbstractEventLoop | None]] = {}
        self._host = link(self._deliver, self._take_stats, self._fail)
        self.failed = self._host.failed
        self.device_text = ""
        self.warmup_s = 0.0
        self.steps: dict = {}  # per step kind: counts and mean phase times (for /health)
        self.step_totals: dict = {}  # per step kind: cumulative counts and phase milliseconds (metrics)
        self.gpu_memory_bytes = 0  # what the engine process's caching allocator holds

    @classmethod
    def spawn(cls, config: ASRConfig, model_path: Path) -> RemoteEngine:
        """The service process's engine: a child with a pipe for this process and one per extra
        worker (started by :meth:`start`)."""
        return cls(functools.partial(EngineProcess, "nemotron-asr-engine",
                                     functools.partial(_load, config, model_path),
                                     log_level=config.log_level, pipes=config.workers))

    @classmethod
    def attach(cls, conn: Connection, device_text: str) -> RemoteEngine:
        """A worker's engine: the running child, through this worker's pipe."""
        engine = cls(EngineLink)
        engine._host.attach(conn)
        engine.device_text = device_text
        return engine

    def start(self, progress: Callable[[str, float], None]) -> None:
        """Start the child and wait until it has loaded and warmed up."""
        self.device_text, self.warmup_s = self._host.start(progress)

    def worker_connections(self) -> list[Connection]:
        return self._host.worker_connections()

    def stop(self, timeout: float = 5.0) -> None:
        self._host.stop(timeout)

    def alive(self, stall_s: float = 30.0) -> bool:
        return self._host.alive(stall_s)

    # --- the engine's API, from any thread ----------------------------------------------------
    def enqueue(self, action: str, stream_id: int, payload=None) -> None:
        self._host.send((action, stream_id, payload))

    def open(self, deliver: Callable[[Result], None], loop: asyncio.AbstractEventLoop | None = None) -> int:
        stream_id = next(self._ids)
        self._streams[stream_id] = (deliver, loop)
        self.enqueue("open", stream_id)
        return stream_id

    def close(self, stream_id: int) -> None:
        super().close(stream_id)
        self._streams.pop(stream_id, None)

    # --- from the host's receiving thread -----------------------------------------------------
    def _deliver(self, results: list[tuple[int, Result]]) -> None:
        # A stream may be closed on the event loop meanwhile: its results are dropped.
        targets = [(self._streams.get(stream_id), result) for stream_id, result in results]
        hand_over((*target, result) for target, result in targets if target is not None)

    def _take_stats(self, stats: dict) -> None:
        self.steps, self.step_totals = stats["steps"], stats["totals"]
        self.gpu_memory_bytes = stats["gpu_memory_bytes"]

    def _fail(self, failure: str) -> None:
        logger.critical(f"ASR engine failed: {failure}")
        self._deliver([(stream_id, Result("error", f"speech recognition engine failed: {failure}"))
                       for stream_id in list(self._streams)])


class _ChildEngine:
    """The engine's side in the child: each pipe's stream ids mapped to the engine's."""

    def __init__(self, engine, emit: Callable[..., None]) -> None:
        self.engine, self.emit = engine, emit
        self.failed = engine.failed
        self._streams: dict[tuple[int, int], int] = {}

    def apply(self, command: tuple, pipe: int) -> None:
        action, stream_id, payload = command
        key = (pipe, stream_id)
        if action == "open":
            self._streams[key] = self.engine.open(lambda result, sid=stream_id:
                                                  self.emit((sid, result), pipe))
            return
        local = self._streams.get(key)
        if local is None:
            return
        self.engine.enqueue(action, local, payload)  # checked by the parent's StreamCommands
        if action == "close":
            del self._streams[key]

    def stats(self) -> dict:
        from nemotron_common.metrics import cuda_memory_reserved

        return {"steps": self.engine.stats.summary(), "totals": self.engine.stats.totals(),
                "gpu_memory_bytes": cuda_memory_reserved()}

    def alive(self) -> bool:
        return self.engine.alive()

    def stop(self) -> None:
        self.engine.stop()


def _load(config: ASRConfig, model_path: Path, progress, emit) -> tuple[_ChildEngine, tuple[str, float]]:
    from .loading import load_engine

    engine, device_text, warmup_s = load_engine(config, model_path, progress)
    return _ChildEngine(engine, emit), (device_text, warmup_s)
