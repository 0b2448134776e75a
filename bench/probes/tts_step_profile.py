"""Where a Magpie decoder step spends its time inside NeMo's generate_speech (random weights).

Wraps the per-step calls of the loop with synchronised timers and runs the server's own
``SpeechModel.generate`` at several batch sizes, with and without CFG. Prints one JSON line per run:
total ms per step and the share of each part. Guides a custom, graph-captured step.

    python bench/probes/tts_step_profile.py /tmp/tts-real.nemo
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_tts.model import SpeechModel, Utterance  # noqa: E402

# (_check_eos_and_update_state is the server's own observation hook, so it is not timed here.)
PARTS = (
    "forward",
    "get_most_attended_text_timestep",
    "construct_inference_prior",
    "sample_codes_from_logits",
    "embed_audio_tokens",
)
TEXT = "Hello there, this is a short reply from the voice agent, spoken as soon as possible."


def timed(owner, name: str, totals: dict) -> None:
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        torch.cuda.synchronize()
        started = time.perf_counter()
        result = original(*args, **kwargs)
        torch.cuda.synchronize()
        totals[name] += time.perf_counter() - started
        return result

    setattr(owner, name, wrapper)


def main(path: str) -> None:
    for cfg in (False, True):
        model = SpeechModel(Path(path), "cuda", use_cfg=cfg, kv_cache=True, max_frames=48)
        totals: dict[str, float] = defaultdict(float)
        for name in PARTS:
            timed(model.model, name, totals)
        timed(model.model._lt_helper, "sample_autoregressive", totals)
        for batch in (1, 8, 32):
            chunks = model.tokenize(TEXT, "en")
            frames = [0]

            def count(codes, frames=frames):
                frames[0] += 1

            utterances = [Utterance(chunks, i % model.speakers, count) for i in range(batch)]
            model.generate(utterances)  # warm
            totals.clear()
            frames[0] = 0
            torch.cuda.synchronize()
            started = time.perf_counter()
            model.generate(utterances)
            torch.cuda.synchronize()
            wall = time.perf_counter() - started
            steps = max(1, frames[0] // batch)
            print(
                json.dumps(
                    {
                        "device": torch.cuda.get_device_name(),
                        "cfg": cfg,
                        "batch": batch,
                        "steps": steps,
                        "ms_per_step": round(wall / steps * 1000, 2),
                        "parts_ms_per_step": {k: round(v / steps * 1000, 2) for k, v in totals.items()},
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1])
