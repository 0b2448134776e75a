"""The LLM backend as a child, on the lifecycle every model server shares (nemotron_common.lifecycle).

The backend serves the port itself and cannot send READY=1, so for the lifecycle: listening is
starting it, loading is polling its ``/health`` until 200, alive is the last probe passing, and a
backend that exits or stops answering fails the service so systemd restarts it. Drain forwards
SIGTERM once (vLLM aborts its clean shutdown on a second one); close kills whatever is left of the
backend's process group after ``stop_timeout``, so no engine process outlives the service holding
GPU memory.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

from loguru import logger
from nemotron_common.config import ConfigError
from nemotron_common.health import Health
from nemotron_common.lifecycle import Progress, Service

from .config import LLMConfig

LLAMA_LEVEL = re.compile(r"^\S+ ([DIWE]) ")
WORD_LEVEL = re.compile(r"\b(DEBUG|INFO|WARNING|WARN|ERROR|CRITICAL)\b")
LEVELS = {"D": "DEBUG", "I": "INFO", "W": "WARNING", "E": "ERROR", "DEBUG": "DEBUG", "INFO": "INFO",
          "WARNING": "WARNING", "WARN": "WARNING", "ERROR": "ERROR", "CRITICAL": "CRITICAL"}


def line_level(line: str) -> str:
    """The backend's own level for a log line (llama.cpp's letter, vLLM's word), INFO if none."""
    match = LLAMA_LEVEL.match(line) or WORD_LEVEL.search(line[:64])
    return LEVELS[match.group(1)] if match else "INFO"


async def http_status(host: str, port: int, path: str, timeout: float = 3.0) -> int | None:
    """Status code of GET path, or None when nothing answers."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (TimeoutError, OSError):
        return None
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        parts = status_line.split()
        return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    except (TimeoutError, OSError):
        return None
    finally:
        writer.close()


class LLMService(Service):
    name = "nemotron-llm"

    def __init__(self, config: LLMConfig, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.config = config
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.health = Health("llm")  # the lifecycle's state; the backend answers /health itself
        self.process: asyncio.subprocess.Process | None = None
        self.probe_host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
        self._start_error = ""
        self._alive = False
        self._failed = asyncio.Event()
        self._pump_task: asyncio.Task | None = None  # the backend's output into the journal
        self._watch_task: asyncio.Task | None = None  # the probes after READY

    async def listen(self) -> None:
        logger.info("starting backend: " + " ".join(self.argv))
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
                start_new_session=True)  # its own process group, so a kill reaches engine workers too
        except OSError as exc:
            self._start_error = f"cannot start backend {self.argv[0]}: {exc.strerror}"
            return
        self._pump_task = asyncio.create_task(self._pump())

    async def load_and_warm_up(self, progress: Progress) -> str:
        """Wait for the backend's /health 200; fails at once if the backend exits first."""
        if self.process is None:
            raise ConfigError(self._start_error)
        started = time.monotonic()
        last_status = 0.0
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(f"backend exited with {self.process.returncode} before it was ready")
            elapsed = time.monotonic() - started
            if elapsed > self.config.start_timeout:
                raise RuntimeError(f"backend did not answer /health 200 within "
                                   f"{self.config.start_timeout:g} s")
            status = await self._probe()
            if status == 200:
                self._alive = True
                self._watch_task = asyncio.create_task(self._watch())
                return f"{self.config.mode} ready on port {self.config.port} after {elapsed:.1f} s"
            if time.monotonic() - last_status > 5:
                state = "not listening yet" if status is None else f"/health {status}"
                # No extension (budget 0): the unit's TimeoutStartSec, set per mode by the
                # installer, is what bounds the backend's start under systemd.
                progress(f"loading {self.config.mode}: {state} after {elapsed:.0f} s", 0.0)
                last_status = time.monotonic()
            await self._exit_or_sleep(0.25)

    def serving(self) -> None:
        pass

    def engine_alive(self) -> bool:
        return self._alive

    async def wait_engine_failed(self) -> None:
        await self._failed.wait()

    async def drain(self, timeout_s: float) -> None:
        self._stop_watching()
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)  # once: vLLM aborts a clean shutdown on a second
            try:
                await asyncio.wait_for(self.process.wait(), timeout_s)
            except TimeoutError:
                logger.warning(f"backend still running {timeout_s:g} s after SIGTERM; "
                               "killing its process group")

    async def close(self) -> None:
        self._stop_watching()
        process = self.process
        if process is not None:
            try:  # whatever is left of its process group (engine workers) goes too
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            await process.wait()
            logger.info(f"backend stopped ({process.returncode})")
        await asyncio.gather(*filter(None, (self._pump_task, self._watch_task)), return_exceptions=True)

    # --- internals --------------------------------------------------------------------------------
    async def _pump(self) -> None:
        backend = logger.bind(name="backend").patch(lambda r: r.update(name=self.config.backend))
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                backend.log(line_level(line), line)

    async def _probe(self) -> int | None:
        return await http_status(self.probe_host, self.config.port, "/health")

    async def _watch(self) -> None:
        """After READY: probe every ``health_interval``; an exit or ``health_failures`` failed probes
        in a row fail the service."""
        failures = 0
        while True:
            await self._exit_or_sleep(self.config.health_interval)
            if self.process.returncode is not None:
                logger.error(f"backend exited with {self.process.returncode}; exiting so systemd restarts it")
                break
            status = await self._probe()
            self._alive = status == 200
            if self._alive:
                failures = 0
                continue
            failures += 1
            logger.warning(f"backend health probe failed ({status or 'no answer'}), "
                           f"{failures}/{self.config.health_failures}")
            if failures >= self.config.health_failures:
                logger.error("backend stopped answering; exiting so systemd restarts it")
                break
        self._alive = False
        self._failed.set()

    def _stop_watching(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()

    async def _exit_or_sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), seconds)
        except TimeoutError:
            pass
