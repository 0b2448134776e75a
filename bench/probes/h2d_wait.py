"""On the GPU: does a small host-to-device copy wait for the kernels queued before it?

The ASR engine prepares the next batch while the GPU runs the current one; a copy that waits for
the GPU would make that preparation serial. Times each kind of copy while a 50 ms kernel runs.

    python bench/probes/h2d_wait.py
"""

import time

import numpy as np
import torch


def timed_under_load(name: str, copy) -> None:
    torch.cuda.synchronize()
    torch.cuda._sleep(50_000_000)  # tens of ms of GPU work queued ahead
    started = time.perf_counter()
    copy()
    print(f"{name}: {(time.perf_counter() - started) * 1000:.2f} ms", flush=True)
    torch.cuda.synchronize()


def main() -> None:
    torch.cuda.synchronize()
    started = time.perf_counter()
    torch.cuda._sleep(50_000_000)
    torch.cuda.synchronize()
    print(f"the queued kernel alone: {(time.perf_counter() - started) * 1000:.2f} ms")
    pinned = torch.zeros(512, dtype=torch.long).pin_memory()
    small = np.zeros(512, dtype=np.int64)
    for _ in range(2):
        timed_under_load("torch.tensor(list, device=cuda)",
                         lambda: torch.tensor(list(range(512)), device="cuda"))
        timed_under_load("from_numpy(...).to(cuda, non_blocking)",
                         lambda: torch.from_numpy(small).to("cuda", non_blocking=True))
        timed_under_load("pinned .to(cuda, non_blocking)", lambda: pinned.to("cuda", non_blocking=True))
        timed_under_load("empty + index_fill on cuda", lambda: torch.zeros(512, device="cuda").fill_(1))


if __name__ == "__main__":
    main()
