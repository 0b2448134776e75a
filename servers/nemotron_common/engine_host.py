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

A service with several transport workers (processes of its own sharing the port) gives the child
one pipe per worker: :meth:`EngineProcess.worker_connections` hands out the extra parent ends, and
a worker talks to the engine through an :class:`EngineLink` over its end. Commands say which pipe
they came from, results go back through it, and every pipe gets the heartbeat.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import queue
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Protocol

from loguru import logger

STATS_INTERVAL_S = 1.0  # the child's heartbeat, with the engine's statistics
_DETACH = object()  # a worker's link closing its pipe (the engine goes on)


class ChildEngine(Protocol):
    """The child's side of an engine."""

    failed: threading.Event

    def apply(self, command: object, pipe: int) -> None:
        """One command from the parent, in the order sent through ``pipe`` (0 unless the service has
        workers); what it causes goes back through ``emit(item, pipe)``."""

    def stats(self) -> dict:
        """Statistics for the parent's /health and /metrics (the heartbeat's payload)."""

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


Progress = Callable[[str, float], None]
Emit = Callable[..., None]  # emit(item, pipe=0)
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


class EngineLink:
    """One pipe to the engine process: sends commands, hands results and statistics over.

    ``on_results`` gets each batch of what the child emitted for this pipe, ``on_stats`` each
    heartbeat's statistics, ``on_failure`` the reason once the engine cannot serve (before ``failed``
    is set); all on the receiving thread."""

    def __init__(self, on_results: Callable[[list], None], on_stats: Callable[[dict], None],
                 on_failure: Callable[[str], None]) -> None:
        self.on_results, self.on_stats, self.on_failure = on_results, on_stats, on_failure
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._conn: Connection | None = None
        self.failed = threading.Event()
        self.failure = ""
        self._stopping = False
        self.heartbeat = time.monotonic()

    def attach(self, conn: Connection) -> None:
        """Serve over ``conn``, a pipe to an engine process that is already running (a worker's)."""
        self._conn = conn
        self._start_threads("nemotron-engine-link")

    def _start_threads(self, name: str) -> None:
        threading.Thread(target=self._receive, name=f"{name}-results", daemon=True).start()
        threading.Thread(target=self._send, name=f"{name}-commands", daemon=True).start()

    def send(self, command: object) -> None:
        """Queue ``command`` for the child (any thread)."""
        self._commands.put(command)

    def stop(self, timeout: float = 5.0) -> None:
        """This process is done with the engine: a worker's link closes its pipe, and the engine goes
        on serving the others (the service process's link stops the engine)."""
        self._stopping = True
        self._commands.put(_DETACH)

    def alive(self, stall_s: float = 30.0) -> bool:
        return not self.failed.is_set() and time.monotonic() - self.heartbeat < stall_s

    def _send(self) -> None:
        """Forward commands in batches: whatever has queued up while the last batch was sent, up to
        the last message (``None``, which stops the engine, or a worker's detach)."""
        while True:
            batch = take_batch(self._commands)
            end = next((command for command in batch if command is None or command is _DETACH), False)
            if end is not False:
                batch = batch[:batch.index(end)] + ([None] if end is None else [])
            try:
                if batch:
                    self._conn.send(batch)
                if end is _DETACH:
                    self._conn.close()
            except (OSError, ValueError):
                return  # the child is gone; the receiver reports it
            if end is not False:
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
                elif not self._handle(kind, payload):
                    break
        except (EOFError, OSError):
            if self._stopping:
                return
        if not self.failure:
            self.failure = self._ended()
        self.on_failure(self.failure)
        self.failed.set()

    def _handle(self, kind: str, payload: object) -> bool:
        """Any other message; False ends the link."""
        if kind == "failed":
            self.failure = payload
            return False
        return True

    def _ended(self) -> str:
        return "the engine process ended"


class EngineProcess(EngineLink):
    """The service process's link, which also starts and stops the child."""

    def __init__(self, name: str, load: Loader, on_results: Callable[[list], None],
                 on_stats: Callable[[dict], None], on_failure: Callable[[str], None],
                 log_level: str = "INFO", pipes: int = 1) -> None:
        """``pipes``: this process's own and one per transport worker."""
        super().__init__(on_results, on_stats, on_failure)
        self.name, self.load, self.log_level, self.pipes = name, load, log_level, pipes
        self._process: multiprocessing.Process | None = None
        self._ready = threading.Event()
        self._progress: Progress | None = None
        self._workers_ends: list[Connection] = []
        self.ready_payload: object = None

    def start(self, progress: Progress) -> object:
        """Start the child and wait until it has loaded and warmed up; returns its READY payload."""
        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked into a child
        pairs = [context.Pipe() for _ in range(self.pipes)]
        self._conn, self._workers_ends = pairs[0][0], [parent for parent, _ in pairs[1:]]
        self._progress = progress
        self._process = context.Process(target=child_main, name=self.name, daemon=True,
                                        args=([child for _, child in pairs], self.load, self.log_level))
        self._process.start()
        for _, child in pairs:
            child.close()
        self._start_threads(self.name)
        while not self._ready.wait(0.5):
            if self.failed.is_set():
                raise RuntimeError(self.failure or "the engine process ended while loading")
        return self.ready_payload

    def worker_connections(self) -> list[Connection]:
        """The parent ends of the workers' pipes, one per worker, to hand to them at their start."""
        return self._workers_ends

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the engine: the last command, then the child's exit (killed after ``timeout``)."""
        if self._process is None:
            return
        self._stopping = True
        self._commands.put(None)  # the sender's last message
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(timeout)

    def _handle(self, kind: str, payload: object) -> bool:
        if kind == "progress":
            self._progress(*payload)
        elif kind == "ready":
            self.ready_payload = payload
            self._ready.set()
        return super()._handle(kind, payload)

    def _ended(self) -> str:
        self._process.join(1.0)
        return f"the engine process ended (exit code {self._process.exitcode})"


def child_main(conns: list[Connection], load: Loader, log_level: str) -> None:
    """The engine process: load, warm up, then apply the parent's commands until told to stop.

    ``conns[0]`` is the service process's pipe: a ``None`` through it, or its closing, stops the
    engine. The others are workers' pipes; one that closes is only dropped."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from nemotron_common import heap, logs

    logs.setup(log_level)
    main = conns[0]
    results: queue.SimpleQueue = queue.SimpleQueue()
    try:
        engine, payload = load(lambda text, budget_s: main.send(("progress", (text, budget_s))),
                               lambda item, pipe=0: results.put((pipe, item)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which exits with it
        logger.opt(exception=exc).error(f"loading failed: {exc}")
        main.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    heap.freeze_loaded_objects()
    stats = engine.stats()  # the warmup's work, counted before any client's
    for conn in conns:
        conn.send(("stats", stats))
    main.send(("ready", payload))
    # From here on only this thread sends (a Connection is not safe for two senders at once).
    threading.Thread(target=_send_results, args=(conns, engine, results), name="engine-results",
                     daemon=True).start()
    try:
        _apply_commands(conns, engine)
    finally:
        engine.stop()


def _apply_commands(conns: list[Connection], engine: ChildEngine) -> None:
    pipes = {conn: pipe for pipe, conn in enumerate(conns)}
    while True:
        for conn in multiprocessing.connection.wait(list(pipes)):
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                if pipes[conn] == 0:
                    return  # the service process is gone
                del pipes[conn]  # a worker is gone; the service process notices and stops
                continue
            for command in batch:
                if command is None:
                    return
                engine.apply(command, pipes[conn])


def _send_results(conns: list[Connection], engine: ChildEngine, results: queue.SimpleQueue) -> None:
    """Send the engine's results in batches, each through the pipe its command came from, and the
    statistics through every pipe as a heartbeat once a second."""
    next_stats = 0.0
    live = dict(enumerate(conns))

    def send(pipe: int, message: tuple) -> None:
        try:
            live[pipe].send(message)
        except (OSError, ValueError):
            if pipe == 0:
                raise
            del live[pipe]  # a worker that is gone
        except KeyError:
            pass

    while True:
        batch = take_batch(results, STATS_INTERVAL_S)
        by_pipe: dict[int, list] = {}
        for pipe, item in batch:
            by_pipe.setdefault(pipe, []).append(item)
        try:
            for pipe, items in by_pipe.items():
                send(pipe, ("results", items))
            if not engine.alive():
                stalled = "failed" if engine.failed.is_set() else "stalled"
                for pipe in list(live):
                    send(pipe, ("failed", f"the engine thread {stalled} (see the log)"))
                return
            if time.monotonic() >= next_stats:
                stats = engine.stats()
                for pipe in list(live):
                    send(pipe, ("stats", stats))
                next_stats = time.monotonic() + STATS_INTERVAL_S
        except (OSError, ValueError):
            return
