"""On the GPU: which kernels a batched streaming encoder step spends its time in (random weights).

Builds the server's ``StreamingModel`` for B streams, runs eager steady steps under the torch
profiler and prints the top operators by CUDA time, then the CUDA-graph replay time of the same step
and of the decoder. Guides work on the 512-stream step.

    python bench/probes/asr_step_profile.py /tmp/asr-real.nemo 512
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_asr.model import StreamingModel  # noqa: E402


def timed(name: str, function, model, repeat: int = 5) -> None:
    model.synchronize()
    started = time.perf_counter()
    for _ in range(repeat):
        function()
    model.synchronize()
    print(f"{name}: {(time.perf_counter() - started) / repeat * 1000:.1f} ms", flush=True)


def compare_with_nemo_layers(model, eager, features, lengths, caches) -> None:
    """The same eager step through NeMo's own attention and convolution layers: time and output gap."""
    from nemo.collections.asr.parts.submodules.multi_head_attention import RelPositionMultiHeadAttention
    from nemotron_asr import encoder_layers

    ours = eager(features, lengths, *caches)
    for module in model.encoder.modules():
        if isinstance(module, encoder_layers.StreamingRelPositionAttention):
            module.__class__ = RelPositionMultiHeadAttention
        elif isinstance(module, encoder_layers.PointwiseConv1d):
            module.__class__ = torch.nn.Conv1d
    try:
        nemo = eager(features, lengths, *caches)
        timed("eager encoder step, NeMo's layers", lambda: eager(features, lengths, *caches), model)
    finally:
        encoder_layers.apply(model.encoder)
    for name, a, b in zip(("encoded", "length", "channel cache", "time cache", "cache length"), ours, nemo,
                          strict=True):
        gap = (a.float() - b.float()).abs().max().item()
        print(f"{name}: max |ours - NeMo| {gap:.3g} (max |NeMo| {b.float().abs().max().item():.3g})")


def main(path: str, streams: int, device: str = "cuda") -> None:
    model = StreamingModel(Path(path), right_context=1, device=device, max_streams=streams,
                           graph_buckets=(streams,))
    model.capture()
    kind = model.kinds["steady"]
    features = torch.randn(streams, model.encoder._feat_in, kind.frames, device=model.device)
    lengths = torch.full((streams,), kind.frames, device=model.device)
    slots = list(range(streams))
    model.reset_streams(slots)
    runner = model.steps["steady"]
    eager = getattr(runner, "eager", runner)
    caches = model.pool.gather(torch.tensor(slots, device=model.device))
    typed = features.to(model.dtype)

    def eager_step():
        eager(typed, lengths, *caches)

    for _ in range(3):
        eager_step()
    model.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        eager_step()
        model.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
    timed(f"eager encoder step at {streams} streams", eager_step, model)
    compare_with_nemo_layers(model, eager, typed, lengths, caches)
    timed(f"server encode (gather, step, scatter) at {streams} streams",
          lambda: model.encode("steady", features, lengths, slots), model)
    if hasattr(runner, "graphs"):
        graph = runner.graphs[streams][0]
        timed(f"bare graph replay at {streams} streams", graph.replay, model)
    output = model.encode("steady", features, lengths, slots)
    model.decode(output)  # NeMo captures its decoder graphs on first use
    timed(f"decode at {streams} streams", lambda: model.decode(output), model)


if __name__ == "__main__":
    with torch.inference_mode():  # as the engine thread runs
        main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
