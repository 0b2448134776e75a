"""The ASR service: wires config, the engine process and transport into the shared lifecycle.

With ``workers`` > 1 the service process also starts that many minus one transport workers once its
engine is ready (``nemotron_common.workers``); each runs this service too, built by
:func:`worker_service`, attached to the engine through a pipe of its own.
"""

from __future__ import annotations

import asyncio
import functools
import multiprocessing
import shutil
import tempfile
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger
from nemotron_common import metrics
from nemotron_common.access import Access
from nemotron_common.lifecycle import Progress
from nemotron_common.occupancy import SessionCount
from nemotron_common.service import EngineService
from nemotron_common.workers import Workers

from .config import ASRConfig
from .engine_process import RemoteEngine
from .transport import Transport

if TYPE_CHECKING:
    from .engine import Engine


@dataclass
class WorkerPlace:
    """What a transport worker is given: its pipe to the engine and the service's shared state."""

    engine: Connection
    sessions: Synchronized
    port: int
    metrics_directory: str
    device_text: str


class ASRService(EngineService):
    name = "nemotron-asr"

    def __init__(self, config: ASRConfig, model_path: Path, worker: WorkerPlace | None = None) -> None:
        super().__init__("asr", model_path, config.max_sessions)
        self.config = config
        self.worker = worker
        self.engine: RemoteEngine | Engine | None = None
        self.workers: Workers | None = None
        self._metrics_directory = ""
        shared = config.workers > 1
        if shared:  # before any metric exists
            self._metrics_directory = (worker.metrics_directory if worker
                                       else tempfile.mkdtemp(prefix="nemotron-asr-metrics-"))
            metrics.share_between_processes(self._metrics_directory)
        access = Access.from_settings(config.api_key_file, config.allowed_origins)
        if worker is None:
            logger.info(f"access: {access.describe()}")
        count = SessionCount(config.max_sessions, worker.sessions if worker else None)
        self.transport = Transport(self.health, config.host, worker.port if worker else config.port, count,
                                   config.max_frame_bytes, access, model_path.stem,
                                   max_upload_bytes=config.max_upload_mb * 2**20, reuse_port=shared)

    def open_sessions(self) -> int:
        return len(self.transport.count)

    def engine_details(self) -> dict:
        details = {"steps": self.engine.steps, "max_batch": self.config.max_batch,
                   "gpu_memory_mib": round(self.engine.gpu_memory_bytes / 2**20)}
        if self.config.workers > 1:
            details["workers"] = self.config.workers
        return details

    def load_and_warm_up(self, progress: Progress) -> str:
        if self.worker is not None:
            self.engine = RemoteEngine.attach(self.worker.engine, self.worker.device_text)
            self.device_text = self.worker.device_text
            self.transport.engine = self.engine
            self.watch()
            return f"{multiprocessing.current_process().name} serves port {self.transport.port}"
        if self.config.engine_host == "process":  # this process serves, a child runs the model
            self.engine = RemoteEngine.spawn(self.config, self.model_path)
            self.engine.start(progress)
            self.device_text, warmup_s = self.engine.device_text, self.engine.warmup_s
        else:
            from .loading import load_engine

            self.engine, self.device_text, warmup_s = load_engine(self.config, self.model_path, progress)
        self.transport.engine = self.engine
        self.watch()
        if self.config.workers > 1:
            self._start_workers(progress)
        return f"ready on {self.device_text}; warmup {warmup_s:.2f} s (engine in a {self.config.engine_host})"

    def _start_workers(self, progress: Progress) -> None:
        progress(f"starting {self.config.workers - 1} more worker process(es)", 60.0)
        places = [WorkerPlace(conn, self.transport.count.shared, self.transport.port,
                              self._metrics_directory, self.device_text)
                  for conn in self.engine.worker_connections()]
        services = [functools.partial(worker_service, self.config, self.model_path, place)
                    for place in places]
        self.workers = Workers(self.name, services, self.config.log_level, self.config.drain_timeout)
        self.workers.start()
        for place in places:  # each worker holds its own end now, so the engine sees a dead one's close
            place.engine.close()
        self.watch(self.workers.failed)

    def serving(self) -> None:
        if self.workers is not None:
            self.workers.serve()

    async def drain(self, timeout_s: float) -> None:
        if self.workers is None:
            await super().drain(timeout_s)
            return
        # Each worker drains its own sessions on SIGTERM; the engine serves them all until they exit.
        await asyncio.gather(super().drain(timeout_s), asyncio.to_thread(self.workers.stop, timeout_s + 5.0))

    async def close(self) -> None:
        if self.workers is not None:
            await asyncio.to_thread(self.workers.stop, 5.0)
        await super().close()
        if self._metrics_directory and self.worker is None:
            shutil.rmtree(self._metrics_directory, ignore_errors=True)


def worker_service(config: ASRConfig, model_path: Path, place: WorkerPlace) -> ASRService:
    """A transport worker's service (built in the worker)."""
    return ASRService(config, model_path, place)
