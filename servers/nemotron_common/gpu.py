"""Waiting for the GPU's device nodes before CUDA is touched.

At boot the services can start before the NVIDIA driver has created its device nodes; CUDA then
fails once and PyTorch caches that failure for the life of the process. The units run with
NoNewPrivileges, so CUDA cannot create a missing /dev/nvidia-uvm itself (nvidia-modprobe is setuid).
So a service configured for CUDA waits for the nodes first, reporting why it waits.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/nvidia-uvm")


def wait_for_devices(device: str, progress: Callable[[str, float], None], timeout_s: float = 120.0,
                     nodes: tuple[str, ...] = NODES) -> None:
    """Return once ``nodes`` exist when ``device`` names CUDA explicitly; raise after ``timeout_s``."""
    if not device.startswith("cuda"):
        return  # "auto" and "cpu" take what is there
    deadline = time.monotonic() + timeout_s
    while missing := [node for node in nodes if not os.path.exists(node)]:
        if time.monotonic() > deadline:
            raise RuntimeError(f"GPU device nodes {', '.join(missing)} did not appear within "
                               f"{timeout_s:g} s: is the NVIDIA driver loaded (nvidia-smi) and "
                               "nvidia-persistenced running?")
        progress(f"waiting for {', '.join(missing)}", timeout_s)
        time.sleep(1.0)
