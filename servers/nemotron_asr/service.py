"""The ASR service: wires config, the engine process and transport into the shared lifecycle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger
from nemotron_common.access import Access
from nemotron_common.lifecycle import Progress
from nemotron_common.service import EngineService

from .config import ASRConfig
from .engine_process import RemoteEngine
from .transport import Transport

if TYPE_CHECKING:
    from .engine import Engine


class ASRService(EngineService):
    name = "nemotron-asr"

    def __init__(self, config: ASRConfig, model_path: Path) -> None:
        super().__init__("asr", model_path, config.max_sessions)
        self.config = config
        self.engine: RemoteEngine | Engine | None = None
        access = Access.from_settings(config.api_key_file, config.allowed_origins)
        logger.info(f"access: {access.describe()}")
        self.transport = Transport(self.health, config.host, config.port, config.max_sessions,
                                   config.max_frame_bytes, access, model_path.stem,
                                   max_upload_bytes=config.max_upload_mb * 2**20)

    def engine_details(self) -> dict:
        return {"steps": self.engine.steps, "max_batch": self.config.max_batch,
                "gpu_memory_mib": round(self.engine.gpu_memory_bytes / 2**20)}

    def load_and_warm_up(self, progress: Progress) -> str:
        if self.config.engine_host == "process":  # this process serves, a child runs the model
            self.engine = RemoteEngine(self.config, self.model_path)
            self.engine.start(progress)
            self.device_text, warmup_s = self.engine.device_text, self.engine.warmup_s
        else:
            from .loading import load_engine

            self.engine, self.device_text, warmup_s = load_engine(self.config, self.model_path, progress)
        self.transport.engine = self.engine
        self.watch()
        return f"ready on {self.device_text}; warmup {warmup_s:.2f} s (engine in a {self.config.engine_host})"
