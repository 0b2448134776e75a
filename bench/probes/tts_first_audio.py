"""On the GPU: where one stream's first audio goes, in process (random weights).

Times, for a single utterance, text to token ids, token ids to the first frame (prompt prefill,
first sampling) and the first one-frame codec window, with NeMo's cached decoder and with the
static decoder step, CFG on and off. Prints one JSON line per configuration (medians of 10).

    python bench/probes/tts_first_audio.py /tmp/tts-real.nemo
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "servers"))

from nemotron_tts.model import SpeechModel, Stopped, Utterance  # noqa: E402

TEXT = "Hello there, this is a short reply from the voice agent, spoken as soon as possible."


def first_audio(model: SpeechModel) -> dict[str, float]:
    marks = {"start": time.perf_counter()}
    chunks = model.tokenize(TEXT, "en")
    marks["tokens"] = time.perf_counter()
    decoder = model.stream_decoder()

    def on_frames(codes: torch.Tensor) -> None:
        decoder.push(codes)
        if "frame" not in marks:
            marks["frame"] = time.perf_counter()
            model.codec.decode([decoder.window()])
            marks["audio"] = time.perf_counter()
            raise Stopped

    try:
        model.generate([Utterance(chunks, 0, on_frames)])
    except Stopped:
        pass
    torch.cuda.synchronize()
    return {"tokenize_ms": marks["tokens"] - marks["start"],
            "first_frame_ms": marks["frame"] - marks["tokens"],
            "codec_ms": marks["audio"] - marks["frame"], "total_ms": marks["audio"] - marks["start"]}


def main(path: str) -> None:
    for use_cfg in (False, True):
        for static in (False, True):
            model = SpeechModel(Path(path), "cuda", use_cfg=use_cfg, max_frames=64, static_decoder=static)
            model.capture(16)
            runs = [first_audio(model) for _ in range(12)][2:]
            medians = {k: round(statistics.median(r[k] for r in runs) * 1000, 1) for k in runs[0]}
            print(json.dumps({"device": torch.cuda.get_device_name(), "cfg": use_cfg, "static": static,
                              **medians}), flush=True)
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(sys.argv[1])
