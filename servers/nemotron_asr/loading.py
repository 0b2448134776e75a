"""Load the model, start the engine and warm it up: what the engine process does before READY."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from loguru import logger

from .config import ASRConfig
from .engine import Engine
from .interface import Result
from .model import GRAPH_BUCKETS, StreamingModel, log_device

LOAD_BUDGET_S = 600  # start time systemd grants per loading stage


def load_engine(config: ASRConfig, model_path: Path,
                progress: Callable[[str, float], None]) -> tuple[Engine, str, float]:
    """A running, warmed-up engine, the device it runs on and the warmup's seconds."""
    from nemotron_common import nemo_fixes
    from nemotron_common.devices import memory_note, set_cpu_threads
    from nemotron_common.gpu import wait_for_devices

    wait_for_devices(config.device, progress)
    logger.info(f"torch intra-op threads: {set_cpu_threads(config.cpu_threads, config.device)}")
    log_device()
    progress(f"loading {model_path.name}", LOAD_BUDGET_S)
    started = time.monotonic()
    model = StreamingModel(model_path, config.right_context, config.device, config.dtype,
                           max_streams=config.max_sessions, cuda_graphs=config.cuda_graphs,
                           graph_buckets=tuple(b for b in GRAPH_BUCKETS if b <= config.max_batch))
    logger.info(f"model loaded in {time.monotonic() - started:.1f} s")
    model.capture(progress)
    engine = Engine(model, config.max_batch, timed_steps=config.step_timing)
    streams = config.warmup_streams or min(config.max_batch, config.max_sessions)
    progress(f"warming up with {streams} streams", LOAD_BUDGET_S)
    warm_s = warm_up(engine, streams)
    logger.info(f"warmed up with {streams} streams in {warm_s:.1f} s{memory_note(model.device)}")
    # Nothing releases the allocator's cache afterwards (torch.cuda.empty_cache): NeMo's decoder
    # replays CUDA graphs that use memory the allocator counts as free, and the first step after a
    # release hit an illegal memory access (bench/results/memory-h200-run3.md).
    nemo_fixes.check_interned_bytes()
    return engine, model.describe(), warm_s


def warm_up(engine: Engine, streams: int) -> float:
    """Start ``engine`` and run every step kind on ``streams`` real streams, then on one, so kernels
    and memory are claimed for a full batch and for a lone stream (the first user's) before READY.
    The full batch's commands are queued before the engine starts, so each kind runs as one full
    batch: NeMo's decoder re-captures its CUDA graphs (about half a second) the first time a batch
    is larger than any before."""
    started = time.monotonic()
    seconds = 3 * engine.model.chunk_ms / 1000 + 0.05
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(int(16000 * seconds)) * 3000).astype("<i2").tobytes()
    for index, count in enumerate([streams, 1] if streams > 1 else [1]):
        _utterances(engine, count, pcm, start=index == 0)
    engine.model.synchronize()
    return time.monotonic() - started


def _utterances(engine: Engine, count: int, pcm: bytes, start: bool) -> None:
    """``count`` streams of ``pcm``, each finalized and closed; ``start``: start the engine once
    they are queued."""
    done = threading.Semaphore(0)

    def deliver(result: Result) -> None:
        if result.kind in ("final", "error"):
            done.release()

    ids = [engine.open(deliver) for _ in range(count)]
    for stream_id in ids:
        engine.feed(stream_id, pcm)
        engine.finalize(stream_id)
    if start:
        engine.start()
    for _ in ids:
        if not done.acquire(timeout=LOAD_BUDGET_S) or engine.failed.is_set():
            raise RuntimeError("warmup did not finish")
    for stream_id in ids:
        engine.close(stream_id)
    # Idle before returning, so what runs next (the next round, gc.freeze's collection, the
    # statistics sent with READY) does not overlap the last warmup step.
    deadline = time.monotonic() + LOAD_BUDGET_S
    while engine.active_streams and time.monotonic() < deadline and not engine.failed.is_set():
        time.sleep(0.01)
