"""On the GPU: where a batch's first audio goes, in process (random weights).

A fixed batch of N utterances gets its first frames in one step, so every client's first audio is
the batch's: NeMo's setup before the prompt pass (text encoder, voice context, prior), the prompt
pass itself (``StaticDecoder._prefill``, synchronised around it), the first sampling, then one codec
call for all N first windows. Prints one JSON line per batch size (medians of several runs), then
the host functions that take the longest, profiled at the largest size: they show what does not
scale with the GPU.

    python bench/probes/tts_batch_first_audio.py /tmp/tts-real.nemo --batches 1,16,64,128 \
        --prefill-rows 128
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_tts.model import SpeechModel, Stopped, Utterance  # noqa: E402

TEXT = "Hello there, this is a short reply from the voice agent, spoken as soon as possible."


def first_audio(model: SpeechModel, batch: int) -> dict[str, float]:
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    marks: dict[str, float] = {}
    prefill = model.static._prefill

    def timed_prefill(*args):
        sync()
        marks.setdefault("prefill_start", time.perf_counter())
        try:
            return prefill(*args)
        finally:
            sync()
            marks["prefill_end"] = time.perf_counter()

    sync()
    marks["start"] = time.perf_counter()
    chunks = [model.tokenize(TEXT, "en") for _ in range(batch)]
    marks["tokens"] = time.perf_counter()
    decoders = [model.stream_decoder() for _ in range(batch)]
    utterances = [Utterance(chunks[i], 0, decoders[i].push) for i in range(batch)]

    def on_step() -> None:
        windows = [decoder.window() for decoder in decoders]
        if any(window is None for window in windows):
            return
        sync()
        marks["frame"] = time.perf_counter()
        model.codec.decode(windows)
        sync()
        marks["audio"] = time.perf_counter()
        raise Stopped

    model.static._prefill = timed_prefill
    try:
        model.generate(utterances, on_step)
    finally:
        del model.static._prefill
        for decoder in decoders:  # the codec's carried-state slots, as the server gives them back
            decoder.close()
    return {"tokenize_ms": marks["tokens"] - marks["start"],
            "setup_ms": marks["prefill_start"] - marks["tokens"],
            "prefill_ms": marks["prefill_end"] - marks["prefill_start"],
            "first_frame_ms": marks["frame"] - marks["prefill_end"],
            "codec_ms": marks["audio"] - marks["frame"], "total_ms": marks["audio"] - marks["start"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--batches", default="1,16,64,128")
    parser.add_argument("--prefill-rows", type=int, default=64)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-tf32", dest="tf32", action="store_false")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    model = SpeechModel(Path(args.model), args.device, use_cfg=True, max_frames=64, max_batch=max(batches),
                        prefill_rows=args.prefill_rows, tf32=args.tf32)
    model.capture(max(batches))
    for batch in batches:
        runs = [first_audio(model, batch) for _ in range(args.runs + 2)][2:]
        medians = {k: round(statistics.median(r[k] for r in runs) * 1000, 1) for k in runs[0]}
        device = torch.cuda.get_device_name() if model.device.type == "cuda" else str(model.device)
        print(json.dumps({"device": device, "batch": batch, "prefill_rows": args.prefill_rows,
                          "tf32": args.tf32, **medians}), flush=True)
    profile = cProfile.Profile()
    profile.runcall(first_audio, model, max(batches))
    for order in ("tottime", "cumulative"):
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats(order).print_stats(30)
        print(f"--- host profile at batch {max(batches)}, by {order}\n{text.getvalue()}", flush=True)


if __name__ == "__main__":
    with torch.inference_mode():
        main()
