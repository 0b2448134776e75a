"""On the GPU: how long each captured ASR encoder step takes to replay, per step kind and batch size.

Time to final through the served stack moves by several milliseconds between repeats at 1-64
streams, more than a change to the step itself may cost; this times the step alone (CUDA events,
many replays), so two versions of the servers can be compared in one device call:

    python bench/probes/asr_step_replay.py /tmp/asr-real.nemo --sizes 1,16,64,512
    python bench/probes/asr_step_replay.py /tmp/asr-real.nemo --servers BASELINE/servers

Prints one JSON line per step kind and batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def replay_ms(graph, repeats: int) -> float:
    import torch

    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--servers", type=Path, default=Path(__file__).resolve().parents[2] / "servers")
    parser.add_argument("--sizes", default="1,16,64,512")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    sys.path.insert(0, str(args.servers.resolve()))
    import torch
    from nemotron_asr.model import StreamingModel

    sizes = sorted(int(s) for s in args.sizes.split(","))
    with torch.inference_mode():
        model = StreamingModel(args.model, right_context=1, device="cuda", max_streams=sizes[-1],
                               graph_buckets=tuple(sizes))
        model.capture()
        for kind, step in model.steps.items():
            for size in sizes:
                print(json.dumps({"servers": str(args.servers), "kind": kind, "streams": size,
                                  "replay_ms": round(replay_ms(step.graphs[size][0], args.repeats), 3),
                                  "device": torch.cuda.get_device_name()}), flush=True)


if __name__ == "__main__":
    main()
