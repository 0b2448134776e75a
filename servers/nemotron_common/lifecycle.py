"""The life of a model server, in a fixed order.

listen (``/health`` says loading) -> load and warm up in a worker thread, with STATUS and
EXTEND_TIMEOUT_USEC as each stage progresses -> READY=1 -> serve, sending WATCHDOG=1 while the engine
is alive -> on SIGTERM/SIGINT: STOPPING=1, stop accepting, let open sessions finish within the drain
deadline, close the rest, release the model.

Signal handlers only set an event; this module alone decides the exit code.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
from typing import Protocol

from loguru import logger

from . import exitcodes, heap
from .config import ConfigError
from .health import Health, State
from .notify import Notifier


class Progress(Protocol):
    def __call__(self, text: str, budget_s: float) -> None: ...


class Service(Protocol):
    """What :func:`run` drives. Every server is one: ``EngineService`` (ASR, TTS) and the LLM's
    supervisor (``LLMService``) subclass it, so a missing method fails at import, not at shutdown."""

    name: str
    health: Health

    async def listen(self) -> None: ...

    def load_and_warm_up(self, progress: Progress) -> str:
        """Returns the READY status line. A blocking function runs in a worker thread; a coroutine
        function (a server that only waits, like the LLM supervisor) on the event loop. Raising
        :class:`ConfigError` exits 78 (a restart cannot help), anything else exits 1."""

    def serving(self) -> None:
        """READY is sent and /health says healthy (a service with workers lets them serve now)."""

    def engine_alive(self) -> bool: ...

    async def wait_engine_failed(self) -> None: ...

    async def drain(self, timeout_s: float) -> None: ...

    async def close(self) -> None: ...


def _settle(future: asyncio.Future, result, error: BaseException | None) -> None:
    if not future.done():
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _run_in_thread(func, *args) -> asyncio.Future:
    """Like ``asyncio.to_thread`` but on a daemon thread, so a SIGTERM during a long model load exits."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def target() -> None:
        try:
            result = func(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
            loop.call_soon_threadsafe(_settle, future, None, exc)
        else:
            loop.call_soon_threadsafe(_settle, future, result, None)

    threading.Thread(target=target, name="load", daemon=True).start()
    return future


async def _watchdog(notifier: Notifier, server: Service, interval_s: float) -> None:
    while True:
        if server.engine_alive():
            notifier.watchdog()
        else:
            logger.error("engine is not making progress; withholding WATCHDOG=1")
        await asyncio.sleep(interval_s)


async def run(server: Service, drain_timeout_s: float, notifier: Notifier | None = None) -> int:
    notifier = notifier or Notifier()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    await server.listen()

    def progress(text: str, budget_s: float) -> None:
        server.health.stage = text
        loop.call_soon_threadsafe(notifier.status, text, budget_s)

    if inspect.iscoroutinefunction(server.load_and_warm_up):
        loading = asyncio.ensure_future(server.load_and_warm_up(progress))
    else:
        loading = _run_in_thread(server.load_and_warm_up, progress)
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({loading, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if not loading.done():
        loading.cancel()
        notifier.stopping("stopped while loading")
        server.health.state = State.STOPPING
        await server.close()
        return exitcodes.OK
    if loading.exception() is not None:
        exc = loading.exception()
        server.health.state = State.FAILED
        await server.close()
        if isinstance(exc, ConfigError):
            logger.error(f"{server.name} cannot start: {exc}")
            return exitcodes.CONFIG_ERROR
        logger.opt(exception=exc).critical(f"{server.name} failed to start: {exc}")
        return exitcodes.RUNTIME_FAILURE

    heap.freeze_loaded_objects()
    notifier.ready(loading.result())  # before /health says 200, so no client sees ready first
    server.health.state = State.HEALTHY
    server.serving()
    interval = notifier.watchdog_interval_s()
    tasks = [asyncio.ensure_future(_watchdog(notifier, server, interval))] if interval else []
    engine_failed = asyncio.ensure_future(server.wait_engine_failed())
    await asyncio.wait({stopped, engine_failed}, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()

    if engine_failed.done():
        stopped.cancel()
        logger.critical(f"{server.name} engine failed; exiting so systemd can restart the service")
        server.health.state = State.FAILED
        await server.close()
        return exitcodes.RUNTIME_FAILURE

    engine_failed.cancel()
    notifier.stopping(f"draining open sessions (up to {drain_timeout_s:g} s)")
    server.health.state = State.STOPPING
    await server.drain(drain_timeout_s)
    await server.close()
    logger.info(f"{server.name} stopped")
    return exitcodes.OK
