"""On the GPU: continuous batching's cost per step against the fixed batch (random weights).

For B utterances started together: milliseconds per decoded frame through NeMo's loop with the
static decoder (fixed batch) and through ``ContinuousBatch``; then the cost of one admission (a
joining utterance's preparation and prompt pass) next to a running batch of B.

    python bench/probes/tts_continuous_check.py /tmp/tts-real.nemo
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_tts.continuous import ContinuousBatch  # noqa: E402
from nemotron_tts.model import SpeechModel, Utterance  # noqa: E402

TEXT = "Hello there, this is a short reply from the voice agent, spoken as soon as possible."


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(function) -> float:
    synchronize()
    started = time.perf_counter()
    function()
    synchronize()
    return (time.perf_counter() - started) * 1000


def measure(model: SpeechModel, chunks, batch: int) -> dict:
    def utterances(count: int = batch):
        return [Utterance(chunks, i % model.speakers, lambda codes: None) for i in range(count)]

    fixed = timed(lambda: model.generate(utterances())) / 48
    live = ContinuousBatch(model)
    admit = timed(lambda: live.admit(utterances()))
    steps = []
    while len(live):
        steps.append(timed(live.step))
    running = ContinuousBatch(model)
    running.admit(utterances(max(1, batch - 1)))
    running.step()
    join = timed(lambda: running.admit(utterances(1)))
    return {"batch": batch, "fixed_ms_per_frame": round(fixed, 2), "continuous_admit_ms": round(admit, 2),
            "continuous_ms_per_step": round(sorted(steps)[len(steps) // 2], 2), "one_join_ms": round(join, 2),
            "step_after_join_ms": round(timed(running.step), 2)}


def main(path: str, device: str = "cuda", batches: str = "1,16,64") -> None:
    sizes = [int(b) for b in batches.split(",")]
    model = SpeechModel(Path(path), device, use_cfg=True, max_frames=48, max_batch=max(sizes))
    model.capture(max(sizes))
    chunks = model.tokenize(TEXT, "en")
    name = torch.cuda.get_device_name() if model.device.type == "cuda" else "cpu"
    for batch in sizes:
        result = measure(model, chunks, batch)
        print(json.dumps({"device": name, "cfg": True, **result}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
