"""The ASR service: wires config, model, engine and transport into the shared lifecycle."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from loguru import logger
from nemotron_common import nemo_fixes
from nemotron_common.lifecycle import Progress
from nemotron_common.service import EngineService

from .config import ASRConfig
from .engine import Engine, Result
from .transport import Transport

LOAD_BUDGET_S = 600  # start time systemd grants per loading stage


class ASRService(EngineService):
    name = "nemotron-asr"

    def __init__(self, config: ASRConfig, model_path: Path) -> None:
        super().__init__("asr", model_path, config.max_sessions)
        self.config = config
        self.engine: Engine | None = None
        self.transport = Transport(self.health, config.host, config.port, config.max_sessions,
                                   config.max_frame_bytes)

    def engine_details(self) -> dict:
        return {"steps": self.engine.stats.summary()}

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
        self.watch()
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
