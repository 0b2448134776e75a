"""The TTS service: wires config, model, engine and transport into the shared lifecycle."""

from __future__ import annotations

import queue
import time
from pathlib import Path

from loguru import logger
from nemotron_common import nemo_fixes
from nemotron_common.access import Access
from nemotron_common.lifecycle import Progress
from nemotron_common.service import EngineService

from .catalog import Catalog
from .config import TTSConfig
from .engine import PRESETS, Engine, Job
from .transport import Transport

LOAD_BUDGET_S = 600  # start time systemd grants per loading stage


class TTSService(EngineService):
    name = "nemotron-tts"

    def __init__(self, config: TTSConfig, model_path: Path, codec_path: Path | None = None) -> None:
        super().__init__("tts", model_path, config.max_sessions)
        self.config = config
        self.codec_path = codec_path
        self.engine: Engine | None = None
        access = Access.from_settings(config.api_key_file, config.allowed_origins)
        logger.info(f"access: {access.describe()}")
        self.transport = Transport(self.health, config.host, config.port, config.max_sessions,
                                   config.max_text_chars, config.idle_timeout, access, model_path.stem,
                                   config.http_sample_rate)

    def engine_details(self) -> dict:
        from nemotron_common.metrics import cuda_memory_reserved

        return {"engine": self.engine.summary(), "max_batch": self.config.max_batch,
                "gpu_memory_mib": round(cuda_memory_reserved() / 2**20)}

    def load_and_warm_up(self, progress: Progress) -> str:
        from nemotron_common.devices import set_cpu_threads
        from nemotron_common.gpu import wait_for_devices

        from .model import SpeechModel

        wait_for_devices(self.config.device, progress)
        logger.info(f"torch intra-op threads: {set_cpu_threads(self.config.cpu_threads, self.config.device)}")
        progress(f"loading {self.model_path.name}", LOAD_BUDGET_S)
        started = time.monotonic()
        model = SpeechModel(self.model_path, self.config.device, use_cfg=self.config.cfg,
                            kv_cache=self.config.kv_cache, max_frames=self.config.max_frames,
                            codec=self.codec_path, cuda_graphs=self.config.cuda_graphs,
                            max_batch=self.config.max_batch, static_decoder=self.config.static_decoder,
                            carried_codec=self.config.carried_codec)
        if model.speakers < len(self.config.voice_names):
            raise ValueError(f"the model has {model.speakers} baked speakers but voices names "
                             f"{len(self.config.voice_names)}")
        logger.info(f"model loaded in {time.monotonic() - started:.1f} s: {model.sample_rate} Hz, "
                    f"languages {', '.join(model.languages)}")
        if graphs := model.capture(self.config.max_batch):
            logger.info(f"captured {graphs} CUDA graphs of the decoder step, sampling and codec")
        catalog = Catalog(self.config.voice_names, self.config.default_voice.lower(), list(model.languages),
                          model.tokenize, self.config.max_text_chars)
        self.engine = Engine(model, self.config.max_batch, seed=self.config.seed,
                             gather_s=self.config.gather_ms / 1000,
                             continuous=self.config.continuous_batching)
        self.engine.start()
        progress("warming up", LOAD_BUDGET_S)
        warm_s = self._warm_up(catalog)
        nemo_fixes.check_interned_bytes()
        self.device_text = model.describe()
        self.transport.catalog = catalog
        self.transport.sample_rate = model.sample_rate
        self.engine.metrics = self.transport.metrics  # from here on: the warmup's work is not counted
        self.transport.engine = self.engine
        self.watch()
        return f"ready on {self.device_text}; warmup {warm_s:.2f} s"

    def _warm_up(self, catalog: Catalog) -> float:
        """Real syntheses: streamed batches of 1, 4, 16, ... clients (each batch size first meets its
        kernels and memory here, not in a user's first request: on an H200 the first round of 16 and
        of 64 streams took 105 and 151 ms to first audio, later rounds 68 and 117), then a full batch
        of whole ones, to claim the peak memory."""
        started = time.monotonic()
        prepared = catalog.prepare(self.config.warmup_text, None, "en" if "en" in catalog.languages
                                   else catalog.languages[0])
        most = self.config.max_batch
        streamed = [4 ** k for k in range(most.bit_length()) if 4 ** k < most] + [most]
        for preset, count in [(PRESETS["aggressive"], n) for n in streamed] + [(None, most)]:
            outcome: queue.SimpleQueue[str | None] = queue.SimpleQueue()
            for _ in range(count):  # one client each, so they share one batch
                self.engine.submit(Job(prepared.chunks, prepared.speaker, client=object(),
                                       on_audio=lambda _pcm: None,
                                       on_done=lambda _ms, error, q=outcome: q.put(error), preset=preset))
            for _ in range(count):
                try:
                    error = outcome.get(timeout=LOAD_BUDGET_S)
                except queue.Empty:
                    raise RuntimeError("warmup did not finish") from None
                if error:
                    raise RuntimeError(f"warmup failed: {error}")
        return time.monotonic() - started
