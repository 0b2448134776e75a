"""An engine in a process of its own: the parent's half (:class:`EngineProcess`) and the child's loop.

A server's engine runs in a thread of the service process, or here, in a child process (a setting,
``engine_host``), so that the event loop's per-message Python never holds the engine's GIL. The
server supplies a loader that runs in the child and returns the child's side of the engine (a
:class:`ChildEngine`: commands in, results out through ``emit``) and the payload the parent gets at
READY. Commands cross to the child in batches over a pipe, results come back in batches, with the
engine's statistics once a second as a heartbeat.

The child loads the model, warms up and reports progress the parent turns into sd_notify lines; it
ignores SIGTERM and SIGINT, since the parent drains the sessions first and then stops it, and it
exits when the parent goes away (its end of the pipe closes).
"""

from __future__ import annotations

import multiprocessing
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Protocol

from loguru import logger

STATS_INTERVAL_S = 1.0  # the child's heartbeat, with the engine's statistics


class ChildEngine(Protocol):
    """The child's side of an engine."""

    failed: threading.Event

    def apply(self, command: object) -> None:
        """One command from the parent, in the order sent."""

    def stats(self) -> dict:
        """Statistics for the parent's /health and /metrics (the heartbeat's payload)."""

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


Progress = Callable[[str, float], None]
Emit = Callable[[object], None]
# Runs in the child: loads and warms up, returns the engine's child side and the READY payload.
# It crosses to the child by pickling: a module-level function, or a functools.partial of one.
Loader = Callable[[Progress, Emit], tuple[ChildEngine, object]]


def take_batch(waiting: queue.SimpleQueue, timeout: float | None = None) -> list:
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


class EngineProcess:
    """The parent's half: starts the child, sends commands, hands results and statistics over."""

    def __init__(self, name: str, load: Loader, on_results: Callable[[list], None],
                 on_stats: Callable[[dict], None], on_failure: Callable[[str], None],
                 log_level: str = "INFO") -> None:
        """``on_results`` gets each batch of what the child emitted, ``on_stats`` each heartbeat's
        statistics, ``on_failure`` the reason once the engine cannot serve (before ``failed`` is set);
        all on the receiving thread."""
        self.name, self.load, self.log_level = name, load, log_level
        self.on_results, self.on_stats, self.on_failure = on_results, on_stats, on_failure
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._conn: Connection | None = None
        self._process: multiprocessing.Process | None = None
        self._ready = threading.Event()
        self._progress: Progress | None = None
        self.ready_payload: object = None
        self.failed = threading.Event()
        self.failure = ""
        self._stopping = False
        self.heartbeat = time.monotonic()

    def start(self, progress: Progress) -> object:
        """Start the child and wait until it has loaded and warmed up; returns its READY payload."""
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked into a child
        self._conn, child_end = context.Pipe()
        self._progress = progress
        self._process = context.Process(target=child_main, name=self.name, daemon=True,
                                        args=(child_end, self.load, self.log_level))
        self._process.start()
        child_end.close()
        threading.Thread(target=self._receive, name=f"{self.name}-results", daemon=True).start()
        threading.Thread(target=self._send, name=f"{self.name}-commands", daemon=True).start()
        while not self._ready.wait(0.5):
            if self.failed.is_set():
                raise RuntimeError(self.failure or "the engine process ended while loading")
        return self.ready_payload

    def send(self, command: object) -> None:
        """Queue ``command`` for the child (any thread)."""
        self._commands.put(command)

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

    def _send(self) -> None:
        """Forward commands in batches: whatever has queued up while the last batch was sent."""
        while True:
            batch = take_batch(self._commands)
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
                    self.on_results(payload)
                elif kind == "stats":
                    self.on_stats(payload)
                elif kind == "progress":
                    self._progress(*payload)
                elif kind == "ready":
                    self.ready_payload = payload
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
        self.on_failure(self.failure)
        self.failed.set()


def child_main(conn: Connection, load: Loader, log_level: str) -> None:
    """The engine process: load, warm up, then apply the parent's commands until told to stop."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from nemotron_common import heap, logs

    logs.setup(log_level)
    results: queue.SimpleQueue = queue.SimpleQueue()
    try:
        engine, payload = load(lambda text, budget_s: conn.send(("progress", (text, budget_s))), results.put)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which exits with it
        logger.opt(exception=exc).error(f"loading failed: {exc}")
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    heap.freeze_loaded_objects()
    conn.send(("stats", engine.stats()))  # the warmup's work, counted before any client's
    conn.send(("ready", payload))
    # From here on only this thread sends (a Connection is not safe for two senders at once).
    threading.Thread(target=_send_results, args=(conn, engine, results), name="engine-results",
                     daemon=True).start()
    try:
        while True:
            for command in conn.recv():
                if command is None:
                    return
                engine.apply(command)
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        engine.stop()


def _send_results(conn: Connection, engine: ChildEngine, results: queue.SimpleQueue) -> None:
    """Send the engine's results in batches, and its statistics as a heartbeat once a second."""
    next_stats = 0.0
    while True:
        batch = take_batch(results, STATS_INTERVAL_S)
        try:
            if batch:
                conn.send(("results", batch))
            if not engine.alive():
                stalled = "failed" if engine.failed.is_set() else "stalled"
                conn.send(("failed", f"the engine thread {stalled} (see the log)"))
                return
            if time.monotonic() >= next_stats:
                conn.send(("stats", engine.stats()))
                next_stats = time.monotonic() + STATS_INTERVAL_S
        except (OSError, ValueError):
            return
