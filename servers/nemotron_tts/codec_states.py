"""Streaming decode of a causal HiFi-GAN codec that carries every convolution's input tail.

NeMo's ``CausalHiFiGANDecoder`` (the NanoCodec's decoder) is made of causal convolutions, causal
transposed convolutions and per-sample activations. Each causal convolution pads its input on the
left; here that padding is the tail of the stream's previous input to the same layer instead, kept
between calls. A chunk then costs only its own frames, while the windowed decoder of ``codec.py``
re-decodes the whole receptive field (26 frames for the real shape) with every chunk. Zero tails
are the zero padding a whole-utterance decode starts with, so chunks join exactly.

The tails of every stream live in one tensor per layer (a row per stream slot), so a batch of
streams gathers and stores them with one indexed copy per layer. Row 0 stays zero: a stream's first
chunk reads it, so a reused slot needs no clearing. On CUDA the call is hundreds of small kernels
(an H200 took 14-29 ms eager whether it decoded 1 or 64 streams, 3-18 ms from graphs), so each
(batch bucket, chunk frames) is replayed from a CUDA graph captured at load, padded rows reading row
0 and writing to a scratch row.
"""

from __future__ import annotations

import math
import threading
import weakref

import torch
from loguru import logger
from torch.nn.utils import parametrize

from .codec import Context, StreamDecoder, Window, decode_windows
from .graphs import GraphPool

GRAPH_FRAMES = 8  # chunks of up to this many frames replay from graphs: every preset's chunk size


def unsupported(codec_model) -> str | None:
    """Why the codec's decoder cannot carry states (then the windowed decoder is used); None if it can."""
    from nemo.collections.tts.modules import audio_codec_modules as m

    decoder = codec_model.audio_decoder
    if type(decoder) is not m.CausalHiFiGANDecoder:
        return f"{type(decoder).__name__} is not a CausalHiFiGANDecoder"
    for module in decoder.modules():
        if isinstance(module, m.CausalConv1dNorm):
            conv = module.conv
            if conv.stride[0] != 1 or conv.padding[0] != 0 or module.extra_pad_mode != "constant":
                return "a causal convolution with stride, own padding or non-zero padding"
        elif isinstance(module, m.CausalConvTranspose1dNorm):
            if module.padding_left != 0:
                return "a transposed convolution not trimmed wholly on the right"
        elif isinstance(module, (m.Conv1dNorm, m.ConvTranspose1dNorm)):
            return f"a non-causal {type(module).__name__}"
    return None


class CarriedStates:
    """Every stream's convolution tails, in one (slots + 2, channels, width) tensor per layer: row 0
    is always zero, the last row is scratch for padding rows to write to."""

    def __init__(self, decoder, dtype: torch.dtype, device: torch.device, slots: int = 16) -> None:
        from nemo.collections.tts.modules import audio_codec_modules as m

        self.shapes: list[tuple[int, int]] = []  # (channels, width) per layer, in forward order
        for module in _convolutions(decoder, m):
            conv = module.conv
            if isinstance(module, m.CausalConv1dNorm):
                width = (conv.kernel_size[0] - 1) * conv.dilation[0]
            else:  # a transposed conv's output frame reads this many earlier input frames
                width = math.ceil(conv.kernel_size[0] / conv.stride[0]) - 1
            self.shapes.append((conv.in_channels, width))
        self.dtype, self.device = dtype, device
        self.tensors: list[torch.Tensor] = []
        self.generation = 0  # counts reallocations, which leave captured graphs on stale tensors
        self._free: list[int] = []
        self._lock = threading.Lock()
        self._grow(slots)

    @property
    def capacity(self) -> int:
        return self.tensors[0].shape[0] - 2

    @property
    def scratch(self) -> int:
        return self.tensors[0].shape[0] - 1

    def _grow(self, slots: int) -> None:
        old = self.tensors
        self.tensors = [torch.zeros(slots + 2, channels, width, dtype=self.dtype, device=self.device)
                        for channels, width in self.shapes]
        for new, tensor in zip(self.tensors, old, strict=False):
            new[:tensor.shape[0] - 1] = tensor[:-1]
        self._free += range(old[0].shape[0] - 1 if old else 1, slots + 1)
        self.generation += 1

    def open(self) -> int:
        with self._lock:
            if not self._free:
                self._grow(2 * self.capacity)
            return self._free.pop()

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)


def _convolutions(decoder, m):
    """The decoder's causal convolutions in the order its forward runs them."""
    yield decoder.pre_conv
    for up, layer in zip(decoder.up_sample_conv_layers, decoder.res_layers, strict=True):
        yield up
        for kernel_block in layer.res_blocks:
            for block in kernel_block.res_blocks:
                yield block.input_conv
                yield block.skip_conv
    yield decoder.post_conv


class CarriedStateCodec:
    """Decodes each stream's new frames only; see the module docstring."""

    def __init__(self, codec_helper, samples_per_frame: int, device: torch.device, slots: int = 16,
                 graphs: bool = False) -> None:
        self.codec_model = codec_helper.codec_model
        self.converter = codec_helper.codec_converter
        self.decoder = self.codec_model.audio_decoder
        self.samples_per_frame = samples_per_frame
        self.device = device
        self.states = CarriedStates(self.decoder, self.codec_model.dtype, device, slots)
        self.graphs = GraphPool() if graphs and device.type == "cuda" else None
        self._inputs: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._generation = self.states.generation

    def capture_all(self, max_batch: int) -> int:
        """Capture a chunk of 1..GRAPH_FRAMES frames for every batch bucket; returns the graph count.
        Padding rows only (read row 0, write scratch), so no stream's state moves."""
        if self.graphs is None:
            return 0
        codebooks = self.codec_model.num_codebooks
        for bucket in self.graphs.buckets(max_batch):
            for frames in range(1, GRAPH_FRAMES + 1):
                inputs = (torch.zeros(bucket, codebooks, frames, dtype=torch.long, device=self.device),
                          torch.zeros(bucket, dtype=torch.long, device=self.device),
                          torch.full((bucket,), self.states.scratch, dtype=torch.long, device=self.device))
                self._inputs[(bucket, frames)] = inputs
                self.graphs.call((bucket, frames), lambda inputs=inputs: self.decode_frames(*inputs))
        self._generation = self.states.generation
        return len(self.graphs)

    def describe(self) -> str:
        return f"convolution states carried between chunks ({len(self.states.shapes)} layers)"

    def stream(self) -> StreamDecoder:
        """A stream with its own slot of carried states, given back once the stream is collected
        (or at once by ``close``)."""
        stream = StreamDecoder(Context(0, 0), self.samples_per_frame)
        stream.slot = self.states.open()
        stream.close = weakref.finalize(stream, self.states.release, stream.slot)
        return stream

    def decode(self, windows: list[Window]) -> list[torch.Tensor]:
        return decode_windows(self._decode_group, windows)

    def _decode_group(self, codes: torch.Tensor, group: list[Window]) -> torch.Tensor:
        write = [window.slot for window in group]
        read = [0 if window.first else window.slot for window in group]
        key = (self.graphs.bucket(len(group)) if self.graphs is not None else None, codes.shape[-1])
        if self._inputs and self._generation != self.states.generation:
            logger.warning(f"more streams than the {len(self._inputs)} codec graphs were captured for: "
                           "the codec runs eagerly from now on")
            self._inputs.clear()
        if key not in self._inputs:
            return self.decode_frames(codes.to(self.device), torch.tensor(read, device=self.device),
                                      torch.tensor(write, device=self.device))
        static_codes, static_read, static_write = self._inputs[key]
        padding = key[0] - len(group)
        static_codes[:len(group)].copy_(codes)
        static_read.copy_(torch.tensor(read + [0] * padding))
        static_write.copy_(torch.tensor(write + [self.states.scratch] * padding))
        return self.graphs.call(key, None)[:len(group)]

    @torch.inference_mode()
    def decode_frames(self, codes: torch.Tensor, read: torch.Tensor, write: torch.Tensor) -> torch.Tensor:
        """(B, codebooks, frames) new codes of B streams -> (B, samples) audio of those frames.

        ``read`` holds each stream's slot, or 0 for a stream's first chunk; ``write`` its slot.
        """
        lengths = torch.full((codes.shape[0],), codes.shape[-1], dtype=torch.long, device=self.device)
        # float32 whatever autocast is around, as NeMo decodes (CPU autocast knows no float32)
        autocast = torch.autocast(self.device.type, torch.float32, enabled=self.device.type == "cuda")
        with autocast, parametrize.cached():
            if self.converter is not None:
                codes = self.converter.convert_new_to_original(audio_tokens=codes, audio_lens=lengths)
            inputs = self.codec_model.dequantize(tokens=codes, tokens_len=lengths).to(self.codec_model.dtype)
            return _Pass(self.states.tensors, read, write).decoder(self.decoder, inputs)


class _Pass:
    """One forward of the decoder over new frames, reading and storing the carried tails in order."""

    def __init__(self, tensors: list[torch.Tensor], read: torch.Tensor, write: torch.Tensor) -> None:
        self.tensors, self.read, self.write = iter(tensors), read, write

    def _extend(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """``x`` with the stream's earlier input prepended (and how many frames that is); the new
        tail is stored."""
        tails = next(self.tensors)
        width = tails.shape[-1]
        full = torch.cat([tails.index_select(0, self.read), x], dim=-1)
        tails.index_copy_(0, self.write, full[..., full.shape[-1] - width:])
        return full, width

    def conv(self, module, x: torch.Tensor) -> torch.Tensor:
        return module.activation(module.conv(self._extend(x)[0]))

    def up(self, module, x: torch.Tensor) -> torch.Tensor:
        full, width = self._extend(x)
        stride = module.conv.stride[0]
        # Outputs of the prepended frames were sent with the previous chunk; the right-hand
        # overhang belongs to the next one (NeMo trims it too).
        return module.activation(module.conv(full)[..., width * stride:(width + x.shape[-1]) * stride])

    def decoder(self, decoder, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(decoder.pre_conv, x)
        for act, up, layer in zip(decoder.activations, decoder.up_sample_conv_layers, decoder.res_layers,
                                  strict=True):
            out = self.up(up, act(out))
            branches = []
            for kernel_block in layer.res_blocks:
                branch = out
                for block in kernel_block.res_blocks:
                    skip = self.conv(block.input_conv, block.input_activation(branch))
                    branch = branch + self.conv(block.skip_conv, block.skip_activation(skip))
                branches.append(branch)
            out = sum(branches) / len(branches)
        out = self.conv(decoder.post_conv, decoder.post_activation(out))
        return decoder.out_activation(out)[:, 0]
