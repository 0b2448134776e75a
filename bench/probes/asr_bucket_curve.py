"""On the GPU: what a graph-replayed step costs at each batch size (random weights).

The engine pads a batch up to the smallest captured bucket that holds it, so the cost of a step of
B streams is the replay time of that bucket. This prints, per step kind, the bare replay time of a
fine grid of bucket sizes and the greedy decode of the step's output, to choose the buckets from.

    python bench/probes/asr_bucket_curve.py /tmp/asr-real.nemo 64,128,192,256,320,384,448,512
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_asr.model import StreamingModel  # noqa: E402


def median_ms(function, model, repeat: int = 20) -> float:
    times = []
    for _ in range(repeat):
        model.synchronize()
        started = time.perf_counter()
        function()
        model.synchronize()
        times.append((time.perf_counter() - started) * 1000)
    return round(sorted(times)[len(times) // 2], 2)


def main(path: str, sizes: str) -> None:
    buckets = sorted(int(s) for s in sizes.split(","))
    model = StreamingModel(Path(path), right_context=1, device="cuda", max_streams=max(buckets),
                           graph_buckets=tuple(buckets))
    model.capture()  # as the server does: every step kind at every bucket
    model.reset_streams(list(range(max(buckets))))
    for name in ("steady", "final"):
        kind = model.kinds[name]
        for size in buckets:
            graph = model.steps[name].graphs[size][0]
            features = torch.randn(size, model.encoder._feat_in, kind.frames, device=model.device)
            lengths = torch.full((size,), kind.frames, device=model.device)
            slots = list(range(size))
            output = model.encode(name, features, lengths, slots)
            model.decode(output)  # NeMo captures its decoder graphs on first use
            print(json.dumps({"kind": name, "streams": size,
                              "replay_ms": median_ms(graph.replay, model),
                              "encode_ms": median_ms(partial(model.encode, name, features, lengths, slots),
                                                     model),
                              "decode_ms": median_ms(partial(model.decode, output), model)}), flush=True)


if __name__ == "__main__":
    with torch.inference_mode():  # as the engine thread runs
        main(sys.argv[1], sys.argv[2])
