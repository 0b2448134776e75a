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


class PoolState:
    """A copy of every stream's encoder caches, to run two variants of a step from one state."""

    def __init__(self, pool) -> None:
        self.pool = pool
        self.saved = [t.clone() for t in (pool.channel, pool.start, pool.time, pool.channel_len)]

    def restore(self) -> None:
        tensors = (self.pool.channel, self.pool.start, self.pool.time, self.pool.channel_len)
        for tensor, saved in zip(tensors, self.saved, strict=True):
            tensor.copy_(saved)

    def caches(self, index):
        return self.pool.gather(index)


def report_gap(label: str, names, ours, theirs) -> None:
    for name, a, b in zip(names, ours, theirs, strict=True):
        gap = (a.float() - b.float()).abs().max().item()
        print(f"{label} {name}: max gap {gap:.3g} (max |value| {b.float().abs().max().item():.3g})")


NAMES = ("encoded", "length", "channel cache", "time cache", "cache length")


def run_and_read(step, features, lengths, index, state: PoolState):
    state.restore()
    encoded, encoded_len = step(features, lengths, index)
    return (encoded.clone(), encoded_len.clone(), *[t.clone() for t in state.caches(index)])


def compare_with_nemo_layers(model, eager, features, lengths, index) -> None:
    """The same eager step through NeMo's own attention and convolution layers: time and output gap."""
    from nemo.collections.asr.parts.submodules.multi_head_attention import RelPositionMultiHeadAttention
    from nemotron_asr import encoder_layers

    state = PoolState(model.pool)
    ours = run_and_read(eager, features, lengths, index, state)
    for module in model.encoder.modules():
        if isinstance(module, encoder_layers.StreamingRelPositionAttention):
            module.__class__ = RelPositionMultiHeadAttention
        elif isinstance(module, encoder_layers.PointwiseConv1d):
            module.__class__ = torch.nn.Conv1d
    try:
        nemo = run_and_read(eager, features, lengths, index, state)
        timed("eager encoder step, NeMo's layers", lambda: eager(features, lengths, index), model)
    finally:
        encoder_layers.apply(model.encoder)
        state.restore()
    report_gap("ours vs NeMo's layers (eager)", NAMES, ours, nemo)


def compare_graph_with_eager(model, runner, features, lengths, index) -> None:
    """A padded graph replay (cache gather and scatter inside) against the eager step."""
    state = PoolState(model.pool)
    graph = run_and_read(runner, features, lengths, index, state)
    eager = run_and_read(runner.eager, features, lengths, index, state)
    state.restore()
    report_gap("graph vs eager", NAMES, graph, eager)


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
    index = torch.tensor(slots, device=model.device)
    typed = features.to(model.dtype)
    for _ in range(3):  # caches that are not all zeros
        eager(typed, lengths, index)
    model.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA,
                                            torch.profiler.ProfilerActivity.CPU]) as prof:
        eager(typed, lengths, index)
        model.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90))
    timed(f"eager encoder step at {streams} streams", lambda: eager(typed, lengths, index), model)
    compare_with_nemo_layers(model, eager, typed, lengths, index)
    timed(f"server encode at {streams} streams", lambda: model.encode("steady", features, lengths, slots),
          model)
    if hasattr(runner, "graphs"):
        graph = runner.graphs[streams][0]
        timed(f"bare graph replay at {streams} streams", graph.replay, model)
        some = torch.randperm(streams, device=model.device)[: streams - 3]  # padded, out of order
        compare_graph_with_eager(model, runner, typed[: streams - 3], lengths[: streams - 3], some)
    output = model.encode("steady", features, lengths, slots)
    model.decode(output)  # NeMo captures its decoder graphs on first use
    timed(f"decode at {streams} streams", lambda: model.decode(output), model)


if __name__ == "__main__":
    with torch.inference_mode():  # as the engine thread runs
        main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
