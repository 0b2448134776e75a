"""Incremental codec decoding whose chunk seams are exact by construction.

The codec decoder is a stack of convolutions, so each output frame depends only on a fixed window of
code frames around it. A :class:`StreamDecoder` cuts an utterance's growing codes into chunks, and a
codec decodes them so that every sample sent is the sample a whole-utterance decode would produce:
:class:`WindowedCodec` (any codec) decodes each chunk together with enough earlier (and, for a
non-causal decoder, later) frames, as measured once at load by :func:`receptive_field`;
``codec_states.CarriedStateCodec`` (a causal HiFi-GAN codec, the NanoCodec's kind) carries each
convolution's state from chunk to chunk instead. Nothing is cross-faded or smoothed at the seams
because nothing needs to be.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

PROBE_FRAMES = 96


@dataclass(frozen=True)
class Context:
    left: int  # earlier frames an output frame depends on
    right: int  # later frames an output frame depends on


def receptive_field(decode, num_codebooks: int, codebook_size: int, device: torch.device) -> Context:
    """How far a change of one code frame reaches in the decoded audio, in frames (plus one for safety)."""
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, codebook_size, (1, num_codebooks, PROBE_FRAMES), generator=generator)
    changed = codes.clone()
    middle = PROBE_FRAMES // 2
    changed[:, :, middle] = (changed[:, :, middle] + codebook_size // 2) % codebook_size
    base, other = decode(codes.to(device)), decode(changed.to(device))
    samples_per_frame = base.shape[-1] // PROBE_FRAMES
    diff = (base - other).abs().flatten()
    touched = torch.nonzero(diff > 1e-6 * max(float(base.abs().max()), 1e-6)).flatten()
    if touched.numel() == 0:
        return Context(1, 1)
    first, last = int(touched[0]) // samples_per_frame, int(touched[-1]) // samples_per_frame
    # A change at frame `middle` reaches outputs first..last: those outputs read that many frames
    # back (left) and ahead (right).
    return Context(left=last - middle + 1, right=middle - first + 1 if first < middle else 0)


@dataclass(frozen=True)
class Window:
    """The code frames to decode for one chunk, and which of the decoded samples are the chunk."""

    codes: torch.Tensor  # (codebooks, frames), earlier (and later) context included
    offset: int  # first sample of the chunk in the decoded window
    samples: int  # samples of the chunk
    end: int  # frames sent once the chunk is out
    slot: int = 0  # the stream's carried codec state (CarriedStateCodec only)
    first: bool = False  # the stream's first chunk


class StreamDecoder:
    """One utterance's growing code sequence, cut into chunks whose audio joins without seams."""

    def __init__(self, context: Context, samples_per_frame: int) -> None:
        self.context = context
        self.samples_per_frame = samples_per_frame
        # (codebooks, frames) generated so far: joined only when a chunk is cut, not one copy (a
        # kernel launch on a GPU) per utterance per decoder step
        self._codes: list[torch.Tensor] = []
        self.total = 0
        self.sent = 0  # frames whose audio has been handed out
        self.slot = 0  # its row of carried codec state (CarriedStateCodec only)
        self.close: Callable[[], object] = lambda: None  # gives a carried state's slot back

    @property
    def codes(self) -> torch.Tensor | None:
        if len(self._codes) > 1:
            self._codes = [torch.cat(self._codes, dim=-1)]
        return self._codes[0] if self._codes else None

    def push(self, codes: torch.Tensor) -> None:
        self._codes.append(codes)
        self.total += codes.shape[-1]

    def ready(self) -> int:
        """Frames that could be sent now without waiting for later codes."""
        return max(0, self.total - self.context.right - self.sent)

    def window(self, final: bool = False) -> Window | None:
        """The next chunk: every ready frame (every remaining frame when ``final``); None if none."""
        end = self.total if final else self.total - self.context.right
        if end <= self.sent:
            return None
        start = max(0, self.sent - self.context.left)
        stop = min(self.total, end + self.context.right)
        spf = self.samples_per_frame
        chunk = Window(self.codes[:, start:stop], (self.sent - start) * spf, (end - self.sent) * spf, end,
                       self.slot, self.sent == 0)
        self.sent = end
        return chunk


# Frames times rows one codec call decodes at most. The codec's activations grow with both, and a
# full batch of whole utterances in one call left gigabytes in the allocator after the warm-up
# (bench/results/memory-h200-run4.md), so longer windows go in fewer rows per call; streamed chunks
# (128 rows of 8 frames at most) are never split.
MAX_FRAME_ROWS = 1024


def decode_windows(decode: Callable[[torch.Tensor, list[Window]], torch.Tensor],
                   windows: list[Window]) -> list[torch.Tensor]:
    """Each window's chunk audio, on the CPU; windows of one length share one ``decode(codes, group)``
    call and one device-to-host copy (the usual case: utterances of one batch advance a frame per
    step together), up to ``MAX_FRAME_ROWS`` frames a call."""
    audio: list[torch.Tensor | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for index, window in enumerate(windows):
        by_length.setdefault(window.codes.shape[-1], []).append(index)
    for length, same_length in by_length.items():
        rows = max(1, MAX_FRAME_ROWS // max(1, length))
        for start in range(0, len(same_length), rows):
            indices = same_length[start:start + rows]
            group = [windows[i] for i in indices]
            decoded = decode(torch.stack([window.codes for window in group]), group).float().cpu()
            for row, window in enumerate(group):
                audio[indices[row]] = decoded[row, window.offset:window.offset + window.samples]
    return audio


class WindowedCodec:
    """Any codec: each chunk is decoded with its receptive field around it."""

    def __init__(self, decode: Callable[[torch.Tensor], torch.Tensor], context: Context,
                 samples_per_frame: int) -> None:
        self._decode = decode
        self.context = context
        self.samples_per_frame = samples_per_frame

    def describe(self) -> str:
        return f"chunks decoded with {self.context.left} frames before, {self.context.right} after"

    def capture_all(self, max_batch: int) -> int:
        return 0  # window lengths vary with the codec: nothing to capture ahead

    def stream(self) -> StreamDecoder:
        return StreamDecoder(self.context, self.samples_per_frame)

    def decode(self, windows: list[Window]) -> list[torch.Tensor]:
        return decode_windows(lambda codes, _group: self._decode(codes), windows)
