"""The torch device a server runs on."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """``auto`` takes CUDA when there is one; an explicit CUDA device without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name} requested but CUDA is not available")
    return device
