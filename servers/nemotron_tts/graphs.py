"""Static-shape functions captured once per key in CUDA graphs and replayed.

Used for the per-frame sampling steps of Magpie's generation loop, which are hundreds of tiny
kernels (launch-bound) with shapes fixed by the batch size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


def bucket_for(rows: int) -> int | None:
    return next((b for b in BUCKETS if b >= rows), None)


def buckets_up_to(max_batch: int) -> list[int]:
    """The buckets a batch of at most ``max_batch`` rows can use: what warmup captures."""
    return [b for b in BUCKETS if b <= max(1, max_batch)]


class GraphPool:
    def __init__(self) -> None:
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._calls: dict[tuple, tuple[torch.cuda.CUDAGraph, object]] = {}

    def run(self, key: tuple, shape: tuple[int, ...], like: torch.Tensor,
            function: Callable[[torch.Tensor], torch.Tensor],
            fill: Callable[[torch.Tensor], None]) -> torch.Tensor:
        """Replay ``function`` on a zeroed static input of ``shape`` that ``fill`` writes into."""
        graph, static_in, static_out = self._graphs.get(key) or self.capture(key, shape, like, function)
        static_in.zero_()
        fill(static_in)
        graph.replay()
        return static_out

    def capture(self, key: tuple, shape: tuple[int, ...], like: torch.Tensor,
                function: Callable[[torch.Tensor], torch.Tensor]):
        static_in = torch.zeros(shape, dtype=like.dtype, device=like.device)
        graph, static_out = _record(lambda: function(static_in))
        self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]

    def call(self, key: tuple, function: Callable[[], object]):
        """Replay ``function``, which reads and writes only fixed buffers; captured on first use.

        Capturing runs it twice for warmup, so it must be idempotent for the same buffer contents.
        """
        if key not in self._calls:
            self._calls[key] = _record(function)
        graph, outputs = self._calls[key]
        graph.replay()
        return outputs

    def __len__(self) -> int:
        return len(self._graphs) + len(self._calls)


_shared_pool = None


def _pool():
    """One memory pool for every TTS graph. They replay one at a time on the engine's stream, so
    each graph's scratch may reuse another's; a private pool per graph and bucket held gigabytes."""
    global _shared_pool
    if _shared_pool is None:
        _shared_pool = torch.cuda.graph_pool_handle()
    return _shared_pool


def _like(value):
    """Fresh buffers of ``value``'s tensors' shapes (structure kept, non-tensors as they are)."""
    if isinstance(value, torch.Tensor):
        return torch.empty_like(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_like(v) for v in value)
    return value


def _copy(target, source) -> None:
    if isinstance(target, torch.Tensor):
        target.copy_(source)
    elif isinstance(target, (tuple, list)):
        for t, s in zip(target, source, strict=True):
            _copy(t, s)


def _record(function: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, object]:
    """Capture ``function`` in a graph, after two runs that warm up kernels and the allocator.

    The graph copies its results into buffers allocated outside the shared pool: a later graph's
    scratch could otherwise overlap them, and a caller may read a result after another replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            warm = function()
    torch.cuda.current_stream().wait_stream(stream)
    outputs = _like(warm)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=_pool()):
        _copy(outputs, function())
    return graph, outputs
