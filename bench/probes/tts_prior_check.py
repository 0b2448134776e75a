"""NeMo's per-item attention-prior bookkeeping against servers/nemotron_tts/prior.py's.

Every decoder step finds the text position each item attends to and builds the next step's prior.
Times both for one step of 1-128 items (CFG: twice the score rows; a 60-token text, the default
lookahead window of 5), no model needed: NeMo's methods read nothing of the model.

    source bench/device_setup.sh && python bench/probes/tts_prior_check.py
"""

import copy
import json
import time

import torch
from nemo.collections.tts.models import MagpieTTSModel
from nemotron_tts import prior

WIDTH, WINDOW = 60, 5


def timed(find, build, items: int, device: str, repeats: int = 30) -> float:
    generator = torch.Generator().manual_seed(items)
    scores = torch.rand(2 * items, WIDTH, generator=generator).to(device)
    lens = torch.full((items,), WIDTH, device=device)
    last = [[int(t) for t in torch.randint(0, WIDTH - 10, (items,), generator=generator)]]
    counters = [{t: 3 for t in range(0, last[0][i])} for i in range(items)]  # a text half spoken
    total = 0.0
    for _ in range(repeats):
        counter = copy.deepcopy(counters)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        attended, counter = find(None, scores, last, lens, WINDOW, counter, items)
        built = build(None, 0.1, scores, lens, attended, counter, {}, {}, {}, WINDOW, items)
        if device == "cuda":
            torch.cuda.synchronize()
        total += time.perf_counter() - started
        assert built[0].shape[0] == 2 * items
    return total / repeats * 1000


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    for items in (1, 16, 64, 128):
        nemo = timed(MagpieTTSModel.get_most_attended_text_timestep, MagpieTTSModel.construct_inference_prior,
                     items, device)
        ours = timed(prior.most_attended, prior.inference_prior, items, device)
        print(json.dumps({"device": name, "items": items, "nemo_ms": round(nemo, 3),
                          "ours_ms": round(ours, 3)}), flush=True)


if __name__ == "__main__":
    main()
