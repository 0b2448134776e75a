"""On the GPU: what is alive at the TTS server's memory peak, by the code that allocated it.

Loads and warms up the TTS engine in process as the server does (``load_engine``, default settings
but ``--max-batch``) with PyTorch's allocator history on, then replays the history to the moment the
most memory was allocated and groups what was alive then by the innermost frame in the servers or
NeMo. Prints the groups, largest first, and the allocator's figures at READY.

    python bench/probes/tts_memory_peak.py /tmp/tts-real.nemo --max-batch 64
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

MIB = 1024 * 1024
HISTORY = 1_000_000  # allocator events kept (the newest); a warm-up at batch 64 makes more


def _where(frames: list[dict]) -> str:
    """The innermost frame in our servers or NeMo, and the innermost of our servers' if different."""
    ours = next((f for f in frames if "nemotron_" in f["filename"]), None)
    nemo = next((f for f in frames if "nemotron_" in f["filename"] or "/nemo/" in f["filename"]), None)
    parts = []
    for frame in (nemo, ours):
        if frame is not None:
            text = f"{Path(frame['filename']).name}:{frame['line']} {frame['name']}"
            if text not in parts:
                parts.append(text)
    return " <- ".join(parts) or "(no server or NeMo frame)"


def live_at_peak(events: list[dict]) -> tuple[int, dict[int, dict]]:
    """Replay alloc/free events: the peak of allocated bytes and the blocks alive at it."""
    total = peak = peak_index = 0
    sizes: dict[int, int] = {}
    for index, event in enumerate(events):
        if event["action"] == "alloc":
            sizes[event["addr"]] = event["size"]
            total += event["size"]
        elif event["action"] == "free_completed":
            total -= sizes.pop(event["addr"], 0)
        if total > peak:
            peak, peak_index = total, index
    live: dict[int, dict] = {}
    for event in events[:peak_index + 1]:
        if event["action"] == "alloc":
            live[event["addr"]] = event
        elif event["action"] == "free_completed":
            live.pop(event["addr"], None)
    return peak, live


@click.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--max-batch", type=int, default=64, show_default=True)
@click.option("--top", type=int, default=25, show_default=True)
def main(model: Path, max_batch: int, top: int) -> None:
    from nemotron_tts.config import TTSConfig
    from nemotron_tts.loading import load_engine

    torch.cuda.memory._record_memory_history(enabled="all", context="alloc", stacks="python",
                                             max_entries=HISTORY)
    config = TTSConfig(model=str(model), device="cuda", max_batch=max_batch)
    loaded = load_engine(config, model, None, lambda *_: None)
    snapshot = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    loaded.engine.stop()
    events = snapshot["device_traces"][0]
    peak, live = live_at_peak(events)
    groups: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for event in live.values():
        group = groups[_where(event.get("frames") or [])]
        group[0] += event["size"]
        group[1] += 1
    print(f"{torch.cuda.get_device_name()}, TTS max_batch {max_batch}, random weights: {len(events)} "
          f"allocator events, peak {peak / MIB:.0f} MiB allocated, {len(live)} blocks alive at it")
    if len(events) >= HISTORY:
        print(f"(only the newest {HISTORY} events were kept: what was allocated before them, weights and "
              "caches among it, is not counted, so the peak is of what the later part allocated)")
    print(f"at READY: {torch.cuda.memory_allocated() / MIB:.0f} MiB allocated, "
          f"{torch.cuda.memory_reserved() / MIB:.0f} MiB reserved")
    for where, (size, count) in sorted(groups.items(), key=lambda item: -item[1][0])[:top]:
        print(f"{size / MIB:9.1f} MiB {count:6d} blocks  {where}")


if __name__ == "__main__":
    main()
