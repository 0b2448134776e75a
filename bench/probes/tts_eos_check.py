"""On the GPU: NeMo's per-item end-of-speech check against servers/nemotron_tts/eos.py's batched one.

NeMo's check runs a few kernels and waits for the GPU once or twice per item every decoder step. Times
both for one step's codes of 1-128 items (Magpie's 8 codebooks, default detection method), no model
needed: NeMo's methods run on a stand-in holding the attributes they read.

    source bench/device_setup.sh && python bench/probes/tts_eos_check.py
"""

import json
import time
import types

import torch
from nemo.collections.tts.models import MagpieTTSModel
from nemo.collections.tts.models.magpietts import ChunkedInferenceConfig, ChunkState
from nemo.collections.tts.modules.magpietts_modules import EOSDetectionMethod
from nemotron_tts import eos

METHOD = EOSDetectionMethod.ARGMAX_OR_MULTINOMIAL_ANY  # Magpie's default


def stand_in():
    model = types.SimpleNamespace(audio_eos_id=2017, frame_stacking_factor=1,
                                  chunked_inference_config=ChunkedInferenceConfig())
    for name in ("detect_eos", "find_eos_frame_index"):
        setattr(model, name, types.MethodType(getattr(MagpieTTSModel, name), model))
    return model


def timed(check, model, items: int, device: str, repeats: int = 50) -> float:
    codes = torch.randint(0, 2016, (items, 8, 1), device=device)
    argmax = torch.randint(0, 2016, (items, 8, 1), device=device)
    total = 0.0
    for _ in range(repeats):
        state = ChunkState(batch_size=items)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        check(model, state, codes, argmax, {}, {}, {}, [True] * items, METHOD, 3, items)
        total += time.perf_counter() - started
    return total / repeats * 1000


def main() -> None:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = stand_in()
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    for items in (1, 16, 64, 128):
        nemo = timed(MagpieTTSModel._check_eos_and_update_state, model, items, device)
        ours = timed(eos.check_eos_and_update_state, model, items, device)
        print(json.dumps({"device": name, "items": items, "nemo_ms": round(nemo, 3),
                          "batched_ms": round(ours, 3)}), flush=True)


if __name__ == "__main__":
    main()
