"""Does a stream's transcript depend on how many streams share its batch?

Streams one clip as N identical streams through the server's own engine and steps, for several N, and
prints the distinct finals and words per stream at each. On the CPU every N gives the same final (a
test checks it); on a GPU the random model's emission rate has moved with the batch size (about 0.8
words/s per stream at 1-16 streams and about 20 from 64 on, bf16, ASR run 13). In float32 that would
point at a bug rather than rounding.

    python bench/probes/asr_batch_invariance.py /tmp/asr-real.nemo --dtype float32 --streams 1,16,64,256
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "servers"), str(ROOT)]

from nemotron_asr.engine import Engine  # noqa: E402
from nemotron_asr.model import GRAPH_BUCKETS, StreamingModel  # noqa: E402

from random_models.asr import CALIBRATION_SEED, speechlike_audio  # noqa: E402


def finals_of(model: StreamingModel, count: int, pcm: bytes) -> list[str]:
    """The final of each of ``count`` streams of ``pcm``, all in one batch."""
    finals: dict[int, str] = {}
    done = threading.Semaphore(0)

    def deliver(result, index: int) -> None:
        if result.kind in ("final", "error"):
            finals[index] = result.text if result.kind == "final" else f"<error {result.text}>"
            done.release()

    engine = Engine(model, max_batch=count)
    ids = [engine.open(lambda result, i=i: deliver(result, i)) for i in range(count)]
    for stream_id in ids:
        engine.feed(stream_id, pcm)
        engine.finalize(stream_id)
    engine.start()
    try:
        for _ in ids:
            if not done.acquire(timeout=600):
                raise RuntimeError("the engine did not finish")
    finally:
        engine.stop()
    return list(finals.values())


@click.command()
@click.argument("model_path", type=click.Path(exists=True, path_type=Path))
@click.option("--dtype", default="auto", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--streams", default="1,16,64,256", show_default=True)
@click.option("--seconds", default=5.0, show_default=True)
def main(model_path: Path, dtype: str, device: str, streams: str, seconds: float) -> None:
    pcm = (np.clip(speechlike_audio(seconds, CALIBRATION_SEED), -1, 1) * 32767).astype("<i2").tobytes()
    for count in (int(s) for s in streams.split(",")):
        model = StreamingModel(model_path, 1, device, dtype, max_streams=count,
                               graph_buckets=tuple(b for b in GRAPH_BUCKETS if b <= count))
        model.capture()
        started = time.monotonic()
        finals = finals_of(model, count, pcm)
        words = [len(text.split()) for text in finals]
        print(f"{model.describe()}: {count} streams, {len(set(finals))} distinct finals, "
              f"{np.mean(words) / seconds:.2f} words/s per stream (min {min(words)}, max {max(words)} "
              f"words), {time.monotonic() - started:.1f} s; {finals[0][:60]!r}", flush=True)


if __name__ == "__main__":
    main()
