"""What the servers with an engine share around it: health details, failure watch, drain, close.

:class:`EngineService` is the ``lifecycle.Service`` of ASR and TTS. A subclass sets ``transport`` (a
:class:`Transport`), builds its engine (an :class:`Engine`) in ``load_and_warm_up`` and calls
:meth:`watch` once the engine runs.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Sized
from pathlib import Path
from typing import Protocol

from .health import Health
from .lifecycle import Service


class Engine(Protocol):
    """An engine as its service sees it: in this process (TTS) or a proxy to a child (ASR)."""

    failed: threading.Event  # set once the engine can no longer serve

    def alive(self) -> bool:
        """Making progress (the watchdog's question)."""

    def stop(self) -> None: ...


class Transport(Protocol):
    """A port's server: listens from the start, serves once the engine is set."""

    sessions: Sized  # open streams, for /health

    async def start(self) -> None: ...

    async def drain(self, timeout_s: float) -> None:
        """Let open streams and requests finish, then close them."""

    async def close(self) -> None: ...


class EngineService(Service):
    name = "nemotron"

    def __init__(self, service: str, model_path: Path, max_sessions: int) -> None:
        self.model_path = model_path
        self.max_sessions = max_sessions
        self.engine: Engine | None = None
        self.transport: Transport | None = None
        self.device_text = ""
        self.health = Health(service, self._health_details)
        self._failed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def engine_details(self) -> dict:
        """Extra /health fields about the running engine."""
        return {}

    def open_sessions(self) -> int:
        """Open streams, for /health (a service with workers counts theirs too)."""
        return len(self.transport.sessions)

    def _health_details(self) -> dict:
        details = {"model": self.model_path.name, "sessions": self.open_sessions(),
                   "max_sessions": self.max_sessions}
        if self.device_text:
            details["device"] = self.device_text
        if self.engine is not None:
            details.update(self.engine_details())
        return details

    async def listen(self) -> None:
        self._loop = asyncio.get_running_loop()
        # The engine thread runs Python between short GPU waits and keeps the GIL for up to the
        # switch interval (5 ms by default) each time the event loop asks for it; sending one chunk
        # asks several times. 0.5 ms keeps the loop's hand-offs off the latency path.
        sys.setswitchinterval(0.0005)
        await self.transport.start()

    def watch(self, failed: threading.Event | None = None) -> None:
        """Turn the engine's ``failed`` event (or another that means the service cannot serve) into
        :meth:`wait_engine_failed` returning."""
        failed = failed or self.engine.failed

        def wait() -> None:
            failed.wait()
            self._loop.call_soon_threadsafe(self._failed.set)

        threading.Thread(target=wait, name="engine-watch", daemon=True).start()

    def serving(self) -> None:
        pass

    def engine_alive(self) -> bool:
        return self.engine is not None and self.engine.alive()

    async def wait_engine_failed(self) -> None:
        await self._failed.wait()

    async def drain(self, timeout_s: float) -> None:
        await self.transport.drain(timeout_s)

    async def close(self) -> None:
        await self.transport.close()
        if self.engine:
            self.engine.stop()
