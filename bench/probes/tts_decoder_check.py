"""On the GPU: the graph-replayed static decoder step against NeMo's cached decoder (random weights).

Generates the same batch twice per seed, once through NeMo's cached decoder and once through
``StaticDecoder`` (replayed from CUDA graphs), and prints per configuration whether the codes are
equal and the milliseconds per decoded frame of each.

    python bench/probes/tts_decoder_check.py /tmp/tts-real.nemo
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_tts.model import SpeechModel, Utterance  # noqa: E402

TEXT = "Hello there, this is a short reply from the voice agent, spoken as soon as possible."


def generate(model: SpeechModel, batch: int, seed: int) -> tuple[list[torch.Tensor], float]:
    frames: list[list[torch.Tensor]] = [[] for _ in range(batch)]
    chunks = model.tokenize(TEXT, "en")
    utterances = [Utterance(chunks, i % model.speakers, frames[i].append) for i in range(batch)]
    torch.manual_seed(seed)
    torch.cuda.synchronize()
    started = time.perf_counter()
    model.generate(utterances)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    codes = [torch.cat(f, dim=-1) for f in frames]
    return codes, elapsed * 1000 / max(c.shape[-1] for c in codes)


def main(path: str, max_frames: int = 48) -> None:
    for use_cfg in (False, True):
        models = {
            name: SpeechModel(Path(path), "cuda", use_cfg=use_cfg, max_frames=max_frames, max_batch=32,
                              static_decoder=static, kv_cache_dtype="model")
            for name, static in (("nemo", False), ("static", True))
        }
        for model in models.values():
            model.capture(32)
        for batch in (1, 8, 16, 32):
            equal, per_frame = [], {name: [] for name in models}
            for seed in range(3):
                results = {name: generate(model, batch, seed) for name, model in models.items()}
                for name, (_, ms) in results.items():
                    per_frame[name].append(ms)
                pairs = zip(results["nemo"][0], results["static"][0], strict=True)
                equal.append(all(torch.equal(a, b) for a, b in pairs))
            print(json.dumps({
                "device": torch.cuda.get_device_name(), "cfg": use_cfg, "batch": batch, "equal_codes": equal,
                **{f"{name}_ms_per_frame": round(min(values), 2) for name, values in per_frame.items()},
            }), flush=True)
        del models
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1])
