"""How far bf16 streaming steps drift from float32, with NeMo's layers and with ours (random weights).

The switched encoder layers (``servers/nemotron_asr/encoder_layers.py``) equal NeMo's in float32;
in bf16 both round, differently. This runs the same cache-aware steps from the same inputs through
a float32 encoder (the reference) and two bf16 copies, one per layer set, and prints each copy's
distance from the reference after every step.

    python bench/probes/asr_layers_precision.py /tmp/asr-real.nemo 8 cpu
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_asr import encoder_layers  # noqa: E402
from nemotron_asr.model import restore  # noqa: E402


def main(path: str, streams: int, device: str = "cuda", steps: int = 6) -> None:
    reference = restore(Path(path), torch.device(device)).encoder
    left = reference.att_context_size_all[0][0] if reference.att_context_size_all else 70
    reference.set_default_att_context_size([left, 1])
    nemo = copy.deepcopy(reference).to(torch.bfloat16)
    ours = copy.deepcopy(reference).to(torch.bfloat16)
    encoder_layers.apply(ours)
    cfg = reference.streaming_cfg
    encoders = {"float32": (reference, torch.float32), "bf16 NeMo layers": (nemo, torch.bfloat16),
                "bf16 our layers": (ours, torch.bfloat16)}
    states = {name: list(enc.get_initial_cache_state(batch_size=streams, dtype=dtype, device=device))
              for name, (enc, dtype) in encoders.items()}
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        frames = cfg.chunk_size[0] if step == 0 else cfg.pre_encode_cache_size[1] + cfg.shift_size[1]
        features = torch.randn(streams, reference._feat_in, frames, generator=generator).to(device)
        lengths = torch.full((streams,), frames, device=device)
        outputs = {}
        for name, (encoder, dtype) in encoders.items():
            with torch.inference_mode():
                encoded, _, *cache = encoder.cache_aware_stream_step(
                    processed_signal=features.to(dtype), processed_signal_length=lengths,
                    cache_last_channel=states[name][0], cache_last_time=states[name][1],
                    cache_last_channel_len=states[name][2], keep_all_outputs=False,
                    drop_extra_pre_encoded=0 if step == 0 else cfg.drop_extra_pre_encoded)
            states[name] = cache
            outputs[name] = encoded.float()
        exact = outputs["float32"]
        scale = exact.abs().max().item()
        gaps = {name: (out - exact).abs() for name, out in outputs.items() if name != "float32"}
        print(f"step {step}: max |float32| {scale:.3g}; "
              + "; ".join(f"{name}: max {gap.max().item():.3g} mean {gap.mean().item():.3g}"
                          for name, gap in gaps.items()), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
