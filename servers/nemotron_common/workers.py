"""Transport workers: more processes serving one port, each with an event loop of its own.

One event loop carries every client's messages in order. When many streams end at once, their hard
resets queue up behind each other on the way in and their final transcripts on the way out, tens of
microseconds of Python apiece. Workers share that work out the way uvicorn's and gunicorn's do: every
process listens on the port with SO_REUSEPORT, the kernel spreads new connections over them, and each
runs the service's own lifecycle with a link to the one engine process instead of loading a model.

The service process starts them once its engine is ready and before it tells systemd it is. A
worker reports through a pipe once it listens and has attached to the engine, and says healthy only
when the service process, READY by then, tells it to serve: systemd hears the service process alone
(``NotifyAccess=main``), and no client may see a worker ready before it. On shutdown the service
process forwards SIGTERM (the unit's ``KillMode=mixed`` signals it alone), lets the workers drain
their sessions, and stops the engine only after they have exited; a worker that exits on its own
fails the service, which systemd then restarts.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

from loguru import logger

from .notify import Notifier


class Workers:
    def __init__(self, name: str, services: list[Callable], log_level: str, drain_timeout_s: float) -> None:
        """``services``: for each worker, a picklable callable that builds its service in the worker."""
        self.name, self.services = name, services
        self.log_level, self.drain_timeout_s = log_level, drain_timeout_s
        self.failed = threading.Event()
        self._processes: list[multiprocessing.Process] = []
        self._go: list[Connection] = []
        self._stopping = False

    def start(self, timeout_s: float = 60.0) -> None:
        """Start every worker and wait until each serves."""
        context = multiprocessing.get_context("spawn")
        for number, service in enumerate(self.services, start=2):
            ready, child_end = context.Pipe()
            process = context.Process(target=worker_main, name=f"{self.name}-worker-{number}", daemon=True,
                                      args=(service, child_end, self.log_level, self.drain_timeout_s))
            process.start()
            child_end.close()
            self._processes.append(process)
            self._go.append(ready)
        for process, ready in zip(self._processes, self._go, strict=True):
            if not ready.poll(timeout_s):
                raise RuntimeError(f"{process.name} did not start within {timeout_s:g} s")
            try:
                ready.recv()
            except EOFError:
                process.join(5.0)
                raise RuntimeError(f"{process.name} exited while starting "
                                   f"(exit code {process.exitcode})") from None
        for process in self._processes:
            threading.Thread(target=self._watch, args=(process,), name=f"{process.name}-watch",
                             daemon=True).start()
        logger.info(f"{len(self._processes)} more worker process(es) serve the port")

    def serve(self) -> None:
        """Let the workers say healthy (once the service process is READY)."""
        for go in self._go:
            go.send(True)

    def _watch(self, process: multiprocessing.Process) -> None:
        process.join()
        if not self._stopping:
            logger.critical(f"{process.name} exited (exit code {process.exitcode})")
            self.failed.set()

    def stop(self, timeout_s: float) -> None:
        """SIGTERM to every worker (each drains its sessions), then wait up to ``timeout_s`` for them
        to exit; any still running after that is killed."""
        self._stopping = True
        for process in self._processes:
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        for process in self._processes:
            process.join(timeout_s)
            if process.is_alive():
                logger.warning(f"{process.name} did not stop within {timeout_s:g} s; killing it")
                process.kill()
                process.join(5.0)


class _HeldUntilServing:
    """A worker's service whose loading ends only once the service process serves."""

    def __init__(self, service, conn: Connection) -> None:
        self._service, self._conn = service, conn

    def __getattr__(self, name: str):
        return getattr(self._service, name)

    def load_and_warm_up(self, progress) -> str:
        text = self._service.load_and_warm_up(progress)
        self._conn.send(True)  # listening and attached
        try:
            self._conn.recv()
        except EOFError:
            raise RuntimeError("the service process ended while starting its workers") from None
        return text


def worker_main(make_service: Callable, conn: Connection, log_level: str, drain_timeout_s: float) -> None:
    from . import logs
    from .lifecycle import run

    # systemd hears the service process alone, whose watchdog covers the engine every worker uses:
    # without these a worker's notifier sends nothing and asks for no watchdog.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)
    logs.setup(log_level)
    service = _HeldUntilServing(make_service(), conn)
    sys.exit(asyncio.run(run(service, drain_timeout_s, Notifier())))
