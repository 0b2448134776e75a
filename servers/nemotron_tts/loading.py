"""Loading the TTS model, starting its engine and warming it up: in the service process or in the
engine process, the same steps."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from pathlib import Path

from loguru import logger
from nemotron_common import nemo_fixes

from .catalog import Catalog
from .config import TTSConfig
from .engine import Engine
from .interface import PRESETS, Job

LOAD_BUDGET_S = 600  # start time systemd grants per loading stage


@dataclass
class Loaded:
    engine: Engine
    catalog: Catalog
    sample_rate: int
    device_text: str
    warmup_s: float


def load_engine(config: TTSConfig, model_path: Path, codec_path: Path | None, progress) -> Loaded:
    """A running, warmed-up engine and what the transport needs to know of its model."""
    from nemotron_common.devices import memory_note, set_cpu_threads
    from nemotron_common.gpu import wait_for_devices

    from .model import SpeechModel

    wait_for_devices(config.device, progress)
    logger.info(f"torch intra-op threads: {set_cpu_threads(config.cpu_threads, config.device)}")
    progress(f"loading {model_path.name}", LOAD_BUDGET_S)
    started = time.monotonic()
    model = SpeechModel(model_path, config.device, use_cfg=config.cfg, kv_cache=config.kv_cache,
                        max_frames=config.max_frames, codec=codec_path, cuda_graphs=config.cuda_graphs,
                        max_batch=config.max_batch, static_decoder=config.static_decoder,
                        carried_codec=config.carried_codec, prefill_rows=config.prefill_rows,
                        kv_cache_dtype=config.kv_cache_dtype, tf32=config.tf32)
    if model.speakers < len(config.voice_names):
        raise ValueError(f"the model has {model.speakers} baked speakers but voices names "
                         f"{len(config.voice_names)}")
    logger.info(f"model loaded in {time.monotonic() - started:.1f} s: {model.sample_rate} Hz, "
                f"languages {', '.join(model.languages)}{memory_note(model.device)}")
    if graphs := model.capture(config.max_batch):
        logger.info(f"captured {graphs} CUDA graphs of the decoder step, sampling and codec"
                    f"{memory_note(model.device)}")
    catalog = Catalog.from_config(config, model.languages, model.tokenize)
    engine = Engine(model, config.max_batch, seed=config.seed, gather_s=config.gather_ms / 1000,
                    continuous=config.continuous_batching, join_wait_s=config.join_wait_ms / 1000)
    if engine.continuous is not None:
        logger.info("batching: continuous")
    elif config.continuous_batching:
        logger.info("batching: fixed batches (continuous batching needs the static decoder)")
    else:
        logger.info("batching: fixed batches")
    engine.start()
    progress("warming up", LOAD_BUDGET_S)
    warm_s = warm_up(engine, catalog, config.warmup_text, config.max_batch)
    logger.info(f"warmed up in {warm_s:.1f} s{memory_note(model.device)}")
    nemo_fixes.check_interned_bytes()
    return Loaded(engine, catalog, model.sample_rate, model.describe(), warm_s)


def warm_up(engine: Engine, catalog: Catalog, text: str, most: int) -> float:
    """Real syntheses: streamed batches of 1, 4, 16, ... clients (each batch size first meets its
    kernels and memory here, not in a user's first request: on an H200 the first round of 16 and
    of 64 streams took 105 and 151 ms to first audio, later rounds 68 and 117), then a full batch
    in batch mode (audio sent whole), whose codec chunks are longer than the warm-up's streamed ones."""
    from nemotron_common.devices import memory_note

    started = time.monotonic()
    device = engine.model.device
    memory_note(device, peak=True)  # peaks count from here
    prepared = catalog.prepare(text, None, "en" if "en" in catalog.languages else catalog.languages[0])
    streamed = [4 ** k for k in range(most.bit_length()) if 4 ** k < most] + [most]
    for preset, count in [(PRESETS["aggressive"], n) for n in streamed] + [(None, most)]:
        outcome: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        for _ in range(count):  # one client each, so they share one batch
            engine.submit(Job(prepared.chunks, prepared.speaker, client=object(),
                              on_audio=lambda _pcm: None,
                              on_done=lambda _ms, error, q=outcome: q.put(error), preset=preset))
        for _ in range(count):
            try:
                error = outcome.get(timeout=LOAD_BUDGET_S)
            except queue.Empty:
                raise RuntimeError("warmup did not finish") from None
            if error:
                raise RuntimeError(f"warmup failed: {error}")
        kind = "streamed" if preset else "whole"
        logger.info(f"warm-up: {count} {kind} syntheses{memory_note(device, peak=True)}")
    return time.monotonic() - started
