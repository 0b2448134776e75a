"""Run the backend as a child and stand in for it towards systemd.

The backend cannot send READY=1, so the supervisor polls its ``/health`` and notifies when it answers
200; afterwards a probe keeps running, and a backend that exits or stops answering makes the service
exit non-zero so systemd restarts it. SIGTERM is forwarded once (vLLM aborts its clean shutdown on a
second one); a backend still running after ``stop_timeout`` is killed with its whole process group,
so no engine process outlives the service holding GPU memory.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

from loguru import logger
from nemotron_common import exitcodes
from nemotron_common.notify import Notifier

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


class Supervisor:
    def __init__(self, config: LLMConfig, argv: list[str], notifier: Notifier | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.config = config
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.notifier = notifier or Notifier()
        self.process: asyncio.subprocess.Process | None = None
        self.stop = asyncio.Event()
        self.probe_host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        logger.info("starting backend: " + " ".join(self.argv))
        try:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=self.env,
                start_new_session=True)  # its own process group, so a kill reaches engine workers too
        except OSError as exc:
            logger.error(f"cannot start backend {self.argv[0]}: {exc.strerror}")
            return exitcodes.CONFIG_ERROR
        pump = asyncio.create_task(self._pump())
        try:
            code = await self._until_ready()
            if code is None:
                code = await self._serve()
        finally:
            await self._shutdown()
            await asyncio.gather(pump, return_exceptions=True)
        return code

    async def _pump(self) -> None:
        assert self.process and self.process.stdout
        backend = logger.bind(name="backend").patch(lambda r: r.update(name=self.config.backend))
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                backend.log(line_level(line), line)

    async def _health(self) -> int | None:
        return await http_status(self.probe_host, self.config.port, "/health")

    async def _until_ready(self) -> int | None:
        """None once ready; an exit code if the backend died, timed out or we were stopped first."""
        started = time.monotonic()
        last_status = 0.0
        while True:
            if self.stop.is_set():
                self.notifier.stopping("stopped before the backend was ready")
                return exitcodes.OK
            if self.process.returncode is not None:
                logger.error(f"backend exited with {self.process.returncode} before it was ready")
                return exitcodes.RUNTIME_FAILURE
            elapsed = time.monotonic() - started
            if elapsed > self.config.start_timeout:
                logger.error(f"backend did not answer /health 200 within {self.config.start_timeout:g} s")
                return exitcodes.RUNTIME_FAILURE
            status = await self._health()
            if status == 200:
                self.notifier.ready(f"{self.config.mode} ready on port {self.config.port} "
                                    f"after {elapsed:.1f} s")
                return None
            if time.monotonic() - last_status > 5:
                state = "not listening yet" if status is None else f"/health {status}"
                self.notifier.status(f"loading {self.config.mode}: {state} after {elapsed:.0f} s")
                last_status = time.monotonic()
            await self._sleep_or_stop(0.25)

    async def _serve(self) -> int:
        failures = 0
        interval = self.notifier.watchdog_interval_s()
        period = min(self.config.health_interval, interval) if interval else self.config.health_interval
        while not self.stop.is_set():
            if self.process.returncode is not None:
                logger.error(f"backend exited with {self.process.returncode}; exiting so systemd restarts it")
                return exitcodes.RUNTIME_FAILURE
            status = await self._health()
            if status == 200:
                failures = 0
                self.notifier.watchdog()
            else:
                failures += 1
                logger.warning(f"backend health probe failed ({status or 'no answer'}), "
                               f"{failures}/{self.config.health_failures}")
                if failures >= self.config.health_failures:
                    logger.error("backend stopped answering; exiting so systemd restarts it")
                    return exitcodes.RUNTIME_FAILURE
            await self._sleep_or_stop(period)
        self.notifier.stopping("stopping the backend")
        return exitcodes.OK

    async def _sleep_or_stop(self, seconds: float) -> None:
        waiter = asyncio.ensure_future(self.process.wait())
        stopper = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({waiter, stopper}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()

    async def _shutdown(self) -> None:
        process = self.process
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)  # once: vLLM aborts a clean shutdown on a second
            try:
                await asyncio.wait_for(process.wait(), self.config.stop_timeout)
            except TimeoutError:
                logger.warning(f"backend still running {self.config.stop_timeout:g} s after SIGTERM; "
                               "killing its process group")
        try:  # whatever is left of its process group (engine workers) goes too
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        await process.wait()
        logger.info(f"backend stopped ({process.returncode})")
