"""The torch device a server runs on."""

from __future__ import annotations

import os

import numpy as np
import torch


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when there is one; an explicit CUDA device without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} requested but CUDA is not available")
    return device


def index_tensor(values, device: torch.device) -> torch.Tensor:
    """``values`` (ints) as a long tensor on ``device``, without waiting for the GPU.

    ``torch.tensor(values, device=cuda)`` blocks until every kernel queued before it has run (25 ms
    behind a 34 ms kernel on an H200, bench/probes/h2d_wait.py), so the host could not prepare work
    while the GPU is busy; a non-blocking copy of a NumPy array returns in well under a millisecond.
    """
    return torch.from_numpy(np.asarray(values, dtype=np.int64)).to(device, non_blocking=True)


def set_cpu_threads(requested: int, device: str) -> int:
    """Set torch's intra-op threads on purpose, and return how many.

    ``requested`` 0 means: one on a GPU, where the CPU only launches kernels and more threads only
    spin against the event loop and the other services; on the CPU, the cores this process may run
    on. Torch's own default takes every core whatever else runs, and on a small host shared with
    ASR, the LLM and clients its threads oversubscribe the cores many times over.
    """
    if requested <= 0:
        requested = 1 if pick_device(device).type == "cuda" else len(os.sched_getaffinity(0))
    torch.set_num_threads(requested)
    return requested


def memory_note(device: torch.device, peak: bool = False) -> str:
    """What the caching allocator holds on ``device``, for the load log: where a server's GPU
    memory goes, stage by stage ("" off CUDA). Reserved memory includes CUDA-graph pools. With
    ``peak``, the most its tensors held since the last such call (which stage of a warm-up sets the
    memory a server keeps), and the count starts again."""
    if device.type != "cuda":
        return ""
    reserved = torch.cuda.memory_reserved(device) >> 20
    if not peak:
        held = f"{torch.cuda.memory_allocated(device) >> 20}"
    else:
        held = f"at most {torch.cuda.max_memory_allocated(device) >> 20}"
        torch.cuda.reset_peak_memory_stats(device)
    return f" (GPU memory: {held} MiB in tensors, {reserved} MiB reserved)"
