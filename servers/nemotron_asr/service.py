"""The ASR service: wires config, model, engine and transport into the shared lifecycle."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
from loguru import logger
from nemotron_common import nemo_fixes
from nemotron_common.health import Health
from nemotron_common.lifecycle import Progress

from .config import ASRConfig
from .engine import Engine, Result
from .transport import Transport

LOAD_BUDGET_S = 600  # start time systemd grants per loading stage


class ASRService:
    name = "nemotron-asr"

    def __init__(self, config: ASRConfig, model_path: Path) -> None:
        self.config = config
        self.model_path = model_path
        self.engine: Engine | None = None
        self.device_text = ""
        self.health = Health("asr", self._health_details)
        self.transport = Transport(self.health, config.host, config.port, config.max_sessions,
                                   config.max_frame_bytes)
        self._failed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _health_details(self) -> dict:
        details = {"model": self.model_path.name, "sessions": len(self.transport.sessions),
                   "max_sessions": self.config.max_sessions}
        if self.device_text:
            details["device"] = self.device_text
        if self.engine is not None:
            details["steps"] = self.engine.stats.summary()
        return details

    async def listen(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.transport.start()

    def load_and_warm_up(self, progress: Progress) -> str:
        from nemotron_common.gpu import wait_for_devices

        from .model import StreamingModel, log_device

        wait_for_devices(self.config.device, progress)
        log_device()
        progress(f"loading {self.model_path.name}", LOAD_BUDGET_S)
        started = time.monotonic()
        model = StreamingModel(self.model_path, self.config.right_context, self.config.device,
                               self.config.dtype, max_streams=self.config.max_sessions,
                               cuda_graphs=self.config.cuda_graphs,
                               graph_buckets=tuple(b for b in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
                                                   if b <= self.config.max_batch))
        logger.info(f"model loaded in {time.monotonic() - started:.1f} s")
        model.capture(progress)
        self.engine = Engine(model, self.config.max_batch, timed_steps=self.config.step_timing)
        self.engine.start()
        streams = self.config.warmup_streams or min(self.config.max_batch, self.config.max_sessions)
        progress(f"warming up with {streams} streams", LOAD_BUDGET_S)
        warm_s = self._warm_up(streams)
        nemo_fixes.check_interned_bytes()
        self.device_text = model.describe()
        self.transport.engine = self.engine
        threading.Thread(target=self._watch_engine, name="engine-watch", daemon=True).start()
        return f"ready on {self.device_text}; warmup {warm_s:.2f} s"

    def _warm_up(self, streams: int) -> float:
        """Run every step kind on ``streams`` real streams so kernels and memory are claimed."""
        started = time.monotonic()
        done = threading.Semaphore(0)
        rng = np.random.default_rng(0)

        def deliver(result: Result) -> None:
            if result.kind in ("final", "error"):
                done.release()

        seconds = 3 * self.engine.model.chunk_ms / 1000 + 0.05
        pcm = (rng.standard_normal(int(16000 * seconds)) * 3000).astype("<i2").tobytes()
        ids = [self.engine.open(deliver) for _ in range(streams)]
        for stream_id in ids:
            self.engine.feed(stream_id, pcm)
            self.engine.finalize(stream_id)
        for _ in ids:
            if not done.acquire(timeout=LOAD_BUDGET_S) or self.engine.failed.is_set():
                raise RuntimeError("warmup did not finish")
        for stream_id in ids:
            self.engine.close(stream_id)
        self.engine.model.synchronize()
        return time.monotonic() - started

    def _watch_engine(self) -> None:
        self.engine.failed.wait()
        self._loop.call_soon_threadsafe(self._failed.set)

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
