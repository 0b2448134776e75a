"""What the model servers share around their engine: health details, failure watch, drain, close.

A subclass sets ``transport`` (with ``start``, ``drain``, ``close`` and ``sessions``), builds its
engine in ``load_and_warm_up`` and calls :meth:`watch` once the engine runs.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

from .health import Health


class EngineService:
    name = "nemotron"

    def __init__(self, service: str, model_path: Path, max_sessions: int) -> None:
        self.model_path = model_path
        self.max_sessions = max_sessions
        self.engine = None
        self.transport = None
        self.device_text = ""
        self.health = Health(service, self._health_details)
        self._failed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def engine_details(self) -> dict:
        """Extra /health fields about the running engine."""
        return {}

    def _health_details(self) -> dict:
        details = {"model": self.model_path.name, "sessions": len(self.transport.sessions),
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

    def watch(self) -> None:
        """Turn the engine's ``failed`` event into :meth:`wait_engine_failed` returning."""
        def wait() -> None:
            self.engine.failed.wait()
            self._loop.call_soon_threadsafe(self._failed.set)

        threading.Thread(target=wait, name="engine-watch", daemon=True).start()

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
