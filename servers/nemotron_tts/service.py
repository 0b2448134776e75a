"""The TTS service: wires config, model, engine and transport into the shared lifecycle."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from pathlib import Path

from loguru import logger
from nemotron_common import nemo_fixes
from nemotron_common.health import Health
from nemotron_common.lifecycle import Progress

from .catalog import Catalog
from .config import TTSConfig
from .engine import PRESETS, Engine, Job
from .transport import Transport

LOAD_BUDGET_S = 600  # start time systemd grants per loading stage


class TTSService:
    name = "nemotron-tts"

    def __init__(self, config: TTSConfig, model_path: Path, codec_path: Path | None = None) -> None:
        self.config = config
        self.model_path = model_path
        self.codec_path = codec_path
        self.engine: Engine | None = None
        self.device_text = ""
        self.health = Health("tts", self._health_details)
        self.transport = Transport(self.health, config.host, config.port, config.max_sessions,
                                   config.max_text_chars)
        self._failed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _health_details(self) -> dict:
        details = {"model": self.model_path.name, "sessions": len(self.transport.sessions),
                   "max_sessions": self.config.max_sessions}
        if self.device_text:
            details["device"] = self.device_text
        if self.engine is not None:
            details["engine"] = self.engine.summary()
        return details

    async def listen(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self.transport.start()

    def load_and_warm_up(self, progress: Progress) -> str:
        from nemotron_common.gpu import wait_for_devices

        from .model import SpeechModel

        wait_for_devices(self.config.device, progress)
        progress(f"loading {self.model_path.name}", LOAD_BUDGET_S)
        started = time.monotonic()
        model = SpeechModel(self.model_path, self.config.device, use_cfg=self.config.cfg,
                            kv_cache=self.config.kv_cache, max_frames=self.config.max_frames,
                            codec=self.codec_path)
        if model.speakers < len(self.config.voice_names):
            raise ValueError(f"the model has {model.speakers} baked speakers but voices names "
                             f"{len(self.config.voice_names)}")
        logger.info(f"model loaded in {time.monotonic() - started:.1f} s: {model.sample_rate} Hz, "
                    f"languages {', '.join(model.languages)}")
        catalog = Catalog(self.config.voice_names, self.config.default_voice.lower(), list(model.languages),
                          model.tokenize)
        self.engine = Engine(model, self.config.max_batch, seed=self.config.seed,
                             gather_s=self.config.gather_ms / 1000)
        self.engine.start()
        progress("warming up", LOAD_BUDGET_S)
        warm_s = self._warm_up(catalog)
        nemo_fixes.check_interned_bytes()
        self.device_text = model.describe()
        self.transport.catalog = catalog
        self.transport.sample_rate = model.sample_rate
        self.transport.engine = self.engine
        threading.Thread(target=self._watch_engine, name="engine-watch", daemon=True).start()
        return f"ready on {self.device_text}; warmup {warm_s:.2f} s"

    def _warm_up(self, catalog: Catalog) -> float:
        """One real synthesis per path (streamed and whole) so kernels and memory are claimed."""
        started = time.monotonic()
        prepared = catalog.prepare(self.config.warmup_text, None, "en" if "en" in catalog.languages
                                   else catalog.languages[0])
        for preset in (PRESETS["aggressive"], None):
            outcome: queue.SimpleQueue[str | None] = queue.SimpleQueue()
            self.engine.submit(Job(prepared.chunks, prepared.speaker, client=self, on_audio=lambda _pcm: None,
                                   on_done=lambda _ms, error, q=outcome: q.put(error), preset=preset))
            try:
                error = outcome.get(timeout=LOAD_BUDGET_S)
            except queue.Empty:
                raise RuntimeError("warmup did not finish") from None
            if error:
                raise RuntimeError(f"warmup failed: {error}")
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
