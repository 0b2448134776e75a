"""On the GPU: graph-replayed local-transformer sampling against NeMo's eager helper (random weights).

Same seed and an exact bucket size: the codes must be equal. Prints the time per frame's sampling,
eager and replayed.

    python bench/probes/tts_sampler_check.py /tmp/tts-real.nemo
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_tts.code_sampler import CodeSampler  # noqa: E402
from nemotron_tts.local_sampler import LocalSampler  # noqa: E402
from nemotron_tts.model import SpeechModel  # noqa: E402


def timed(function, repeats: int = 20) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1000


def main(path: str) -> None:
    model = SpeechModel(Path(path), "cuda", cuda_graphs=False)
    helper = model.model._lt_helper
    sampler = LocalSampler(helper, graphs=True)
    width = model.model.cfg.decoder.d_model
    for use_cfg in (False, True):
        for batch in (1, 8, 5):
            rows = 2 * batch if use_cfg else batch
            dec = torch.randn(rows, width, device="cuda")
            args = dict(
                temperature=0.7,
                topk=80,
                use_cfg=use_cfg,
                cfg_scale=2.5,
                forbid_audio_eos=False,
                unfinished_items={},
                finished_items={},
            )
            sampler(dec, **args)  # capture
            equal = []
            for seed in range(5):
                torch.manual_seed(seed)
                expected = helper.sample_autoregressive(dec, **args)
                torch.manual_seed(seed)
                got = sampler(dec, **args)
                equal.append(bool(torch.equal(got, expected)))
            print(
                json.dumps(
                    {
                        "device": torch.cuda.get_device_name(),
                        "cfg": use_cfg,
                        "batch": batch,
                        "equal_codes": equal,
                        "eager_ms": round(
                            timed(lambda d=dec, a=args: helper.sample_autoregressive(d, **a)), 2
                        ),
                        "graph_ms": round(timed(lambda d=dec, a=args: sampler(d, **a)), 2),
                    }
                ),
                flush=True,
            )

    codes = CodeSampler(model.model, graphs=True)
    eager = type(model.model).sample_codes_from_logits
    width = model.model.num_all_tokens_per_codebook * model.model.num_audio_codebooks
    for batch in (1, 8, 5):
        logits = torch.randn(batch, width, device="cuda") * 4
        args = dict(temperature=0.01, topk=1, forbid_audio_eos=False, unfinished_items={}, finished_items={})
        equal = []
        for seed in range(5):
            torch.manual_seed(seed)
            expected = eager(model.model, logits.clone(), **args)
            torch.manual_seed(seed)
            equal.append(bool(torch.equal(codes(logits.clone(), **args), expected)))
        print(
            json.dumps(
                {
                    "sampler": "codes (end-of-speech check)",
                    "batch": batch,
                    "equal_codes": equal,
                    "eager_ms": round(timed(lambda x=logits, a=args: eager(model.model, x.clone(), **a)), 2),
                    "graph_ms": round(timed(lambda x=logits, a=args: codes(x, **a)), 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1])
