"""Does a stream's transcript depend on how many streams share its batch?

Streams one clip as N identical streams through the server's own engine and steps, for several N,
and prints the distinct finals ("" for a stream that failed) and words per stream at each. On the
CPU every N gives the same final (a test checks it); on a GPU the random model's emission rate has
moved with the batch size (about 0.8 words/s per stream at 1-16 streams and about 20 from 64 on,
bf16, ASR run 13). In float32 that would point at a bug rather than rounding.

    python bench/probes/asr_batch_invariance.py /tmp/asr-real.nemo --dtype float32 --streams 1,16,64,256
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "servers"), str(ROOT)]

from nemotron_asr.model import GRAPH_BUCKETS, StreamingModel  # noqa: E402

from random_models.asr import CALIBRATION_SEED, served_finals, speechlike_audio  # noqa: E402


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
        finals, _ = served_finals(model, [pcm] * count)
        words = [len(text.split()) for text in finals]
        print(f"{model.describe()}: {count} streams, {len(set(finals))} distinct finals, "
              f"{np.mean(words) / seconds:.2f} words/s per stream (min {min(words)}, max {max(words)} "
              f"words), {time.monotonic() - started:.1f} s; {finals[0][:60]!r}", flush=True)


if __name__ == "__main__":
    main()
