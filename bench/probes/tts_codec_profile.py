"""On the GPU: what one streamed codec call costs, windowed against carried states (random weights).

For batches of streams each sending chunks of n new frames, times one codec call the way the
engine makes it: the windowed codec decodes the chunk with its receptive field before it, the
carried-state codec the new frames only, eagerly and replayed from CUDA graphs. Prints one JSON
line per (batch, frames), medians of 20, then the eager call's busiest kernels at one stream.

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
from nemotron_tts.codec_states import CarriedStateCodec  # noqa: E402
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


def chunk_call(codec, batch: int, frames: int, codes: torch.Tensor, decoders: list):
    decoders += [codec.stream() for _ in range(batch)]
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


def seam_check(model: SpeechModel, codec) -> float:
    """Largest gap between three streams decoded chunk by chunk (1, 2, 4 and 13 frames; the last
    chunk eager, as more than GRAPH_FRAMES would be) and each one's whole decode."""
    codes = torch.randint(0, model.model.codebook_size, (3, model.model.num_audio_codebooks, 20),
                          device=model.device)
    decoders = [codec.stream() for _ in range(3)]
    pieces: list[list[torch.Tensor]] = [[], [], []]
    start = 0
    for frames in (1, 2, 4, 13):
        for decoder, utterance in zip(decoders, codes, strict=True):
            decoder.push(utterance[:, start:start + frames])
        for piece, audio in zip(pieces, codec.decode([d.window(final=True) for d in decoders]), strict=True):
            piece.append(audio)
        start += frames
    whole = model.decode(codes).cpu()
    for decoder in decoders:
        decoder.close()
    return max(float((torch.cat(p) - w).abs().max()) for p, w in zip(pieces, whole, strict=True))


def main(path: str) -> None:
    model = SpeechModel(Path(path), "cuda", use_cfg=False, max_frames=64, max_batch=64)
    model.codec.capture_all(64)
    helper = model.model._codec_helper
    context = receptive_field(model.decode, model.model.num_audio_codebooks, model.model.codebook_size,
                              model.device)
    codecs = {"graphs": model.codec,
              "eager": CarriedStateCodec(helper, model.samples_per_frame, model.device, slots=64),
              "windowed": WindowedCodec(model.decode, context, model.samples_per_frame)}
    codes = torch.randint(0, model.model.codebook_size, (model.model.num_audio_codebooks, PRIMED),
                          device=model.device)
    print(json.dumps({"graphs_vs_whole_decode_max_diff": seam_check(model, codecs["graphs"])}), flush=True)
    for batch in (1, 16, 64):
        for frames in (1, 2, 4):
            row = {"device": torch.cuda.get_device_name(), "batch": batch, "new_frames": frames,
                   "left_context": context.left}
            for name, codec in codecs.items():
                decoders: list = []
                row[f"{name}_ms"] = timed(chunk_call(codec, batch, frames, codes, decoders))
                for decoder in decoders:
                    decoder.close()
            print(json.dumps(row), flush=True)
    decoders = []
    call = chunk_call(codecs["eager"], 1, 1, codes, decoders)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as profile:
        call()
        torch.cuda.synchronize()
    print(profile.key_averages().table(sort_by="cuda_time_total", row_limit=12))


if __name__ == "__main__":
    main(sys.argv[1])
