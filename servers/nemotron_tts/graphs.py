"""Static-shape functions captured once per key in CUDA graphs and replayed.

Used for the per-frame sampling steps of Magpie's generation loop, which are hundreds of tiny
kernels (launch-bound) with shapes fixed by the batch size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from nemotron_common.cuda_graphs import capture

# Rows a graph is captured for; a call's rows are padded to the next one. They reach 512 because
# the static decoder's rows are twice the segments with CFG (a batch of 128 segments is 256 rows);
# a call with more rows than any captured graph runs eagerly, one kernel launch at a time.
BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def bucket_for(rows: int, limit: int | None = None) -> int | None:
    """The rows a call of ``rows`` is padded to: the next bucket, or ``limit`` (the most rows the
    caller was configured for, captured as a bucket of its own) where that is smaller; None past
    both."""
    bucket = next((b for b in BUCKETS if b >= rows), None)
    if limit is not None and rows <= limit and (bucket is None or bucket > limit):
        return limit
    return bucket


def buckets_up_to(max_batch: int) -> list[int]:
    """The buckets a batch of at most ``max_batch`` rows uses (``bucket_for(rows, max_batch)``),
    largest first: the order warmup captures them in. All graphs share one memory pool, where freed
    memory is reused only by requests that fit a freed block, so smaller graphs captured after the
    largest fit in its memory; smallest first, every larger bucket took new memory."""
    top = max(1, max_batch)
    return [top, *(b for b in reversed(BUCKETS) if b < top)]


class GraphPool:
    def __init__(self) -> None:
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._calls: dict[tuple, tuple[torch.cuda.CUDAGraph, object]] = {}
        self.most_rows: int | None = None  # the batch the buckets were captured for (``buckets``)

    def buckets(self, max_rows: int) -> list[int]:
        """The buckets to capture for calls of at most ``max_rows`` rows, largest first; ``bucket``
        pads later calls to these sizes."""
        self.most_rows = max_rows
        return buckets_up_to(max_rows)

    def bucket(self, rows: int) -> int | None:
        """The rows a call of ``rows`` is padded to (``bucket_for`` with the captured batch)."""
        return bucket_for(rows, self.most_rows)

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


def _record(function: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, object]:
    """Capture ``function`` after two warm-up runs; its results are copied out of the shared pool,
    since a caller may read one after another graph replayed."""
    return capture(function, warmup_runs=2, copy_outputs=True)
