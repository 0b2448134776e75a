"""Where the engine's host time per step goes: preparing a batch's features, in one process.

Builds the server's engine (not started) for N streams, feeds every stream 80 ms frames and
prepares steady batches as the engine thread does, with the GPU idle or busy with the previous
batch. Prints the milliseconds per batch and the top functions by own time (cProfile), to compare
with the features phase the running server reports in /health.

    python bench/probes/asr_prepare_profile.py /tmp/asr-real.nemo 256
"""

from __future__ import annotations

import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # random_models

from nemotron_asr.engine import Engine  # noqa: E402
from nemotron_asr.model import StreamingModel  # noqa: E402

from random_models.asr import speechlike_audio  # noqa: E402

FRAME_BYTES = 2560  # 80 ms of 16 kHz 16-bit PCM


def main(path: str, streams: int) -> None:
    model = StreamingModel(Path(path), right_context=1, max_streams=streams, graph_buckets=(streams,))
    model.capture()
    engine = Engine(model, max_batch=streams)
    pcm = (speechlike_audio(4.0, seed=1) * 32767).astype("<i2").tobytes()
    ids = [engine.open(lambda result: None) for _ in range(streams)]
    fed = 0

    def feed(frames: int) -> None:
        nonlocal fed
        for _ in range(frames):
            for stream_id in ids:
                engine.feed(stream_id, pcm[fed:fed + FRAME_BYTES])
            fed += FRAME_BYTES
        engine._take_commands(block=False)

    def run(batch) -> None:
        running = engine._launch(batch)
        engine._deliver(batch, engine._decode(running))
        engine._release(batch)

    profile = cProfile.Profile()
    feed(6)
    run(engine._prepare_next())
    for busy in (False, True, False, True):
        feed(2)
        model.synchronize()
        if busy and model.device.type == "cuda":  # as while the previous batch's encoder runs
            torch.cuda._sleep(50_000_000)
        started = time.perf_counter()
        profile.enable()
        batch = engine._prepare_next()
        profile.disable()
        took = (time.perf_counter() - started) * 1000
        model.synchronize()
        print(f"{batch.kind} batch of {len(batch.steps)}, GPU {'busy' if busy else 'idle'}: "
              f"prepared in {took:.2f} ms ({took * 1000 / len(batch.steps):.1f} us per stream)", flush=True)
        run(batch)
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


if __name__ == "__main__":
    with torch.inference_mode():  # as the engine thread runs
        main(sys.argv[1], int(sys.argv[2]))
