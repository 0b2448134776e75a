"""The TTS service: wires config, model, engine and transport into the shared lifecycle."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from loguru import logger
from nemotron_common.access import Access
from nemotron_common.lifecycle import Progress
from nemotron_common.service import EngineService

from .catalog import Catalog
from .config import TTSConfig
from .engine_process import RemoteEngine
from .transport import Transport

if TYPE_CHECKING:
    from .engine import Engine


class TTSService(EngineService):
    name = "nemotron-tts"

    def __init__(self, config: TTSConfig, model_path: Path, codec_path: Path | None = None) -> None:
        super().__init__("tts", model_path, config.max_sessions)
        self.config = config
        self.codec_path = codec_path
        self.engine: Engine | RemoteEngine | None = None
        access = Access.from_settings(config.api_key_file, config.allowed_origins)
        logger.info(f"access: {access.describe()}")
        self.transport = Transport(self.health, config.host, config.port, config.max_sessions,
                                   config.max_text_chars, config.idle_timeout, access, model_path.stem,
                                   config.http_sample_rate)

    def engine_details(self) -> dict:
        return {"engine": self.engine.summary(), "max_batch": self.config.max_batch,
                "gpu_memory_mib": round(self.engine.gpu_memory_bytes / 2**20)}

    def load_and_warm_up(self, progress: Progress) -> str:
        if self.config.engine_host == "process":  # this process serves, a child runs the model
            self.engine = RemoteEngine(self.config, self.model_path, self.codec_path)
            facts = self.engine.start(progress)
            catalog = Catalog.from_config(self.config, facts["languages"], self.engine.tokenize)
            sample_rate, self.device_text = facts["sample_rate"], facts["device_text"]
            warmup_s = facts["warmup_s"]
        else:
            from .loading import load_engine

            loaded = load_engine(self.config, self.model_path, self.codec_path, progress)
            self.engine, catalog, sample_rate = loaded.engine, loaded.catalog, loaded.sample_rate
            self.device_text, warmup_s = loaded.device_text, loaded.warmup_s
        self.transport.catalog = catalog
        self.transport.sample_rate = sample_rate
        self.engine.metrics = self.transport.metrics  # from here on: the warmup's work is not counted
        self.transport.metrics.gpu_memory = lambda: self.engine.gpu_memory_bytes
        self.transport.engine = self.engine
        self.watch()
        return f"ready on {self.device_text}; warmup {warmup_s:.2f} s (engine in a {self.config.engine_host})"
