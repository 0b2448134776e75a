"""Capturing a CUDA graph, the one way both engines do it.

A graph records a function's kernels once and replays them with one launch, which is what makes
the per-step work of many streams cheap (hundreds of small kernels per step). Every graph of a
process is captured into one memory pool: an engine replays its graphs one at a time on its own
stream, so one graph's scratch may reuse another's, where a private pool per graph and batch size
held gigabytes (TTS, bench/results/memory-h200-run2.md).
"""

from __future__ import annotations

from collections.abc import Callable

_shared_pool = None
_warmup_stream = None


def shared_pool():
    """The id of the process's one graph memory pool (created on first use).

    The pool is held as a ``torch.cuda.MemPool``, which keeps it open for new captures. A bare
    ``graph_pool_handle()`` closes with the last graph captured into it, and capturing into it again
    fails an internal assert of PyTorch's allocator: that is what happens when one model is dropped
    and another loaded in the same process (probes, tests)."""
    import torch

    global _shared_pool
    if _shared_pool is None:
        _shared_pool = torch.cuda.MemPool()
    return _shared_pool.id


def _side_stream():
    """The one stream every capture warms up on. PyTorch keeps a cuBLAS workspace for each stream
    that runs a product, and a fresh ``torch.cuda.Stream()`` per capture cycles through its pool of
    32 streams: up to 32 workspaces, whatever the batch sizes (bench/results/memory-h200-run5.md)."""
    import torch

    global _warmup_stream
    if _warmup_stream is None:
        _warmup_stream = torch.cuda.Stream()
    return _warmup_stream


def capture(function: Callable[[], object], warmup_runs: int = 2, copy_outputs: bool = True):
    """``(graph, outputs)``: ``function`` captured into the shared pool after ``warmup_runs`` runs on a
    side stream (kernels loaded, the allocator's blocks claimed, outside the capture).

    With ``copy_outputs`` the graph copies its results into buffers allocated outside the pool, so
    another graph's scratch never overlaps a result a caller still reads; without it, ``outputs`` live
    in the pool and are valid only until another graph of the pool replays."""
    import torch

    side = _side_stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_runs):
            warm = function()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    if copy_outputs:
        outputs = _like(warm)
        with torch.cuda.graph(graph, pool=shared_pool()):
            _copy(outputs, function())
    else:
        with torch.cuda.graph(graph, pool=shared_pool()):
            outputs = function()
    return graph, outputs


def _like(value):
    """Fresh buffers of ``value``'s tensors' shapes (structure kept, non-tensors as they are)."""
    import torch

    if isinstance(value, torch.Tensor):
        return torch.empty_like(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_like(v) for v in value)
    return value


def _copy(target, source) -> None:
    import torch

    if isinstance(target, torch.Tensor):
        target.copy_(source)
    elif isinstance(target, (tuple, list)):
        for t, s in zip(target, source, strict=True):
            _copy(t, s)
