"""On the GPU: what one streamed codec call costs, windowed against carried states (random weights).

For batches of streams each sending chunks of n new frames, times one codec call the way the
engine makes it: the windowed codec decodes the chunk with its receptive field before it, the
carried-state codec the new frames only. Prints one JSON line per (batch, frames), medians of 20.

    python bench/probes/tts_codec_profile.py /tmp/tts-real.nemo
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_tts.codec import WindowedCodec, receptive_field  # noqa: E402
from nemotron_tts.model import SpeechModel  # noqa: E402

PRIMED = 24  # frames already sent, so windows carry their whole left context


def timed(call) -> float:
    runs = []
    for _ in range(22):
        torch.cuda.synchronize()
        started = time.perf_counter()
        call()
        torch.cuda.synchronize()
        runs.append(time.perf_counter() - started)
    return round(statistics.median(runs[2:]) * 1000, 2)


def chunk_call(codec, batch: int, frames: int, codes: torch.Tensor):
    decoders = [codec.stream() for _ in range(batch)]
    for decoder in decoders:
        decoder.push(codes[:, :PRIMED])
        codec.decode([decoder.window(final=True)])

    def call():
        windows = []
        for decoder in decoders:
            decoder.push(codes[:, :frames])
            windows.append(decoder.window(final=True))
        codec.decode(windows)

    return call


def main(path: str) -> None:
    model = SpeechModel(Path(path), "cuda", use_cfg=False, max_frames=64)
    context = receptive_field(model.decode, model.model.num_audio_codebooks, model.model.codebook_size,
                              model.device)
    codecs = {"carried": model.codec,
              "windowed": WindowedCodec(model.decode, context, model.samples_per_frame)}
    codes = torch.randint(0, model.model.codebook_size, (model.model.num_audio_codebooks, PRIMED),
                          device=model.device)
    for batch in (1, 16, 64):
        for frames in (1, 2, 4):
            row = {"device": torch.cuda.get_device_name(), "batch": batch, "new_frames": frames,
                   "left_context": context.left}
            for name, codec in codecs.items():
                row[f"{name}_ms"] = timed(chunk_call(codec, batch, frames, codes))
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
