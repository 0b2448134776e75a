"""Exact incremental log-mel features for many streams at once.

The model's own preprocessor computes frame ``i`` from the samples centred on ``i * hop`` (an FFT
window of ``n_fft`` samples, zero padded at both ends of the utterance, pre-emphasis applied first).
So any run of frames can be computed from a short slice of audio that starts ``lead`` frames earlier
(those edge frames see the slice's artificial start and are thrown away). The result is bit-for-bit
what the offline preprocessor produces for the whole utterance, and a chunk costs the same at second
1 and at minute 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class FrameRequest:
    """Frames ``[first, first + count)`` of one stream; frames before 0 come back as zeros."""

    audio: bytes | bytearray  # 16-bit PCM of the stream, starting at absolute sample ``audio_origin``
    audio_origin: int
    total_samples: int  # samples of the utterance received so far (the end, when finalising)
    first: int
    count: int


class _Staging:
    """Page-locked host buffers, used in turn, for the 16-bit samples of one batch each.

    A copy from pageable memory may wait for the GPU to reach it in stream order, so the engine
    could not prepare the next batch while the GPU still runs the last one. A buffer is refilled
    only once its previous copy has been made.
    """

    def __init__(self, count: int = 2) -> None:
        self.buffers: list[torch.Tensor | None] = [None] * count
        self.copied: list[torch.cuda.Event | None] = [None] * count
        self.turn = 0

    def take(self, rows: int, span: int) -> tuple[int, torch.Tensor]:
        turn, self.turn = self.turn, (self.turn + 1) % len(self.buffers)
        if self.copied[turn] is not None:
            self.copied[turn].synchronize()
        buffer = self.buffers[turn]
        if buffer is None or buffer.numel() < rows * span:
            buffer = self.buffers[turn] = torch.empty(max(rows * span, 1 << 20), dtype=torch.int16,
                                                      pin_memory=True)
        view = buffer[:rows * span].view(rows, span)
        view.zero_()
        return turn, view

    def to_device(self, turn: int, view: torch.Tensor, device: torch.device) -> torch.Tensor:
        on_device = view.to(device, non_blocking=True)
        self.copied[turn] = torch.cuda.Event()
        self.copied[turn].record(torch.cuda.current_stream(device))
        return on_device


class Featurizer:
    def __init__(self, preprocessor: torch.nn.Module, device: torch.device) -> None:
        featurizer = preprocessor.featurizer
        if getattr(featurizer, "exact_pad", False):
            raise ValueError("preprocessor uses exact_pad; incremental featurisation expects centred frames")
        normalize = getattr(featurizer, "normalize", None)
        if normalize not in (None, "NA", "none"):
            raise ValueError(f"preprocessor normalises per utterance ({normalize!r}); "
                             "cache-aware streaming needs normalize: NA")
        self.preprocessor = preprocessor.to(device).eval()
        self.device = device
        self.hop = featurizer.hop_length
        self.half_window = featurizer.n_fft // 2
        self.lead = math.ceil(self.half_window / self.hop)
        self.sample_rate = int(preprocessor._sample_rate)
        self._staging = _Staging() if device.type == "cuda" else None

    def frames_in(self, samples: int) -> int:
        """Frames the offline preprocessor makes of an utterance of ``samples`` samples."""
        return samples // self.hop

    def samples_needed(self, first: int, count: int) -> int:
        """Samples that must exist before frames up to ``first + count`` are final (no right padding)."""
        return (first + count - 1) * self.hop + self.half_window

    def oldest_sample_needed(self, first: int) -> int:
        """Audio before this sample can be dropped once frame ``first`` is the next needed."""
        return max(0, (first - self.lead) * self.hop)

    def frames(self, requests: list[FrameRequest], count: int) -> torch.Tensor:
        """Features ``(B, n_mels, count)`` for requests that all ask for ``count`` frames.

        The samples stay 16-bit until they are on the device: each stream's are copied once, as they
        were fed, and the batch is converted to float there (exactly: int16 / 2**15 is what the
        offline path computes too)."""
        span = (self.lead + count - 1) * self.hop + self.half_window
        if self._staging is None:
            batch = np.zeros((len(requests), span), dtype=np.int16)
        else:
            turn, staged = self._staging.take(len(requests), span)
            batch = staged.numpy()
        lengths = np.zeros(len(requests), dtype=np.int64)
        for row, request in enumerate(requests):
            start = (request.first - self.lead) * self.hop
            end = min(start + span, request.total_samples)
            lo = max(start, request.audio_origin, 0)
            if end > lo:
                batch[row, lo - start:end - start] = np.frombuffer(
                    request.audio, dtype="<i2", count=end - lo, offset=2 * (lo - request.audio_origin))
            lengths[row] = max(end - start, 0)
        if self._staging is None:
            signal = torch.from_numpy(batch)
        else:
            signal = self._staging.to_device(turn, staged, self.device)
        signal = signal.to(torch.float32).div_(32768.0)
        signal_len = torch.from_numpy(lengths).to(self.device, non_blocking=True)
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=False):
            mel, _ = self.preprocessor(input_signal=signal, length=signal_len)
        mel = mel[:, :, self.lead:self.lead + count]
        # Frames before the utterance (as NeMo's streaming buffer pads) and past the end of a
        # finished one are zeros: one masked fill for the batch, not one small copy per stream.
        first = np.array([request.first for request in requests])
        end = np.array([self.frames_in(request.total_samples) for request in requests]) - first
        frame = np.arange(count)
        outside = (frame < -first[:, None]) | (frame >= end[:, None])
        if outside.any():
            mask = torch.from_numpy(outside).to(self.device, non_blocking=True)  # never waits for the GPU
            mel = mel.masked_fill(mask[:, None, :], 0.0)
        return mel
