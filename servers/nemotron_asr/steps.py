"""One batched cache-aware encoder step, eager or replayed from a CUDA graph.

A streaming step comes in four kinds that differ in input length and in two Python-level switches of
NeMo's ``cache_aware_stream_step`` (frames dropped after subsampling, whether the right-context
outputs are kept): the first chunk of an utterance, a steady chunk, and the final chunk of an
utterance that did or did not get past its first chunk. Each kind has a fixed number of input
frames; final chunks are right padded and carry their true lengths.

On CUDA the 24-layer encoder is launch-bound (tens of ms per step whatever the batch), so each kind
is captured once per batch-size bucket into a CUDA graph with static inputs; a step copies its
streams' features and caches in, replays, and reads the outputs. On CPU it runs eagerly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from loguru import logger


@dataclass(frozen=True)
class StepKind:
    name: str
    frames: int  # input mel frames (final kinds: the most a final chunk can have)
    drop_extra_pre_encoded: int
    keep_all_outputs: bool


def step_kinds(streaming_cfg, lead: int) -> dict[str, StepKind]:
    first = streaming_cfg.chunk_size[0]
    shift = streaming_cfg.shift_size[1]
    pre = streaming_cfg.pre_encode_cache_size[1]
    drop = streaming_cfg.drop_extra_pre_encoded
    return {
        "first": StepKind("first", first, 0, False),
        "steady": StepKind("steady", pre + shift, drop, False),
        # A final chunk holds what is left after the last full chunk: fewer than a full chunk's new
        # frames plus the frames that needed right padding.
        "final_first": StepKind("final_first", first + lead, 0, True),
        "final": StepKind("final", pre + shift + lead + 1, drop, True),
    }


class CachePool:
    """Encoder caches of every stream, one slot per stream, gathered and scattered per step."""

    def __init__(self, encoder, slots: int, dtype: torch.dtype, device: torch.device) -> None:
        channel, time, channel_len = encoder.get_initial_cache_state(batch_size=slots, dtype=dtype,
                                                                     device=device)
        self.channel, self.time, self.channel_len = channel, time, channel_len
        self.free = list(range(slots - 1, -1, -1))

    def acquire(self) -> int:
        """A free slot; its owner resets it (StreamingModel.reset_streams) before use."""
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def reset(self, slots: list[int]) -> None:
        index = torch.tensor(slots, device=self.channel.device)
        self.channel.index_fill_(1, index, 0.0)
        self.time.index_fill_(1, index, 0.0)
        self.channel_len.index_fill_(0, index, 0)

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.channel.index_select(1, index), self.time.index_select(1, index),
                self.channel_len.index_select(0, index))

    def scatter(self, index: torch.Tensor, channel, time, channel_len) -> None:
        self.channel.index_copy_(1, index, channel.to(self.channel.dtype))
        self.time.index_copy_(1, index, time.to(self.time.dtype))
        self.channel_len.index_copy_(0, index, channel_len.to(self.channel_len.dtype))


class EagerStep:
    def __init__(self, encoder, kind: StepKind) -> None:
        self.encoder, self.kind = encoder, kind

    def __call__(self, features, lengths, channel, time, channel_len):
        return self.encoder.cache_aware_stream_step(
            processed_signal=features, processed_signal_length=lengths, cache_last_channel=channel,
            cache_last_time=time, cache_last_channel_len=channel_len,
            keep_all_outputs=self.kind.keep_all_outputs,
            drop_extra_pre_encoded=self.kind.drop_extra_pre_encoded)


class GraphStep:
    """Replays a captured step; batches are padded up to the smallest bucket that holds them."""

    def __init__(self, encoder, kind: StepKind, buckets: list[int], dtype: torch.dtype,
                 pool) -> None:
        self.eager = EagerStep(encoder, kind)
        self.kind = kind
        self.graphs: dict[int, tuple] = {}
        for size in sorted(buckets):
            self.graphs[size] = self._capture(encoder, size, dtype, pool)
        logger.debug(f"captured {kind.name} encoder step for batch sizes {sorted(buckets)}")

    def _capture(self, encoder, size: int, dtype: torch.dtype, pool):
        device = next(encoder.parameters()).device
        features = torch.zeros(size, encoder._feat_in, self.kind.frames, device=device, dtype=dtype)
        lengths = torch.full((size,), self.kind.frames, device=device, dtype=torch.long)
        caches = [t.clone() for t in encoder.get_initial_cache_state(batch_size=size, dtype=dtype,
                                                                         device=device)]
        inputs = (features, lengths, *caches)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm up kernels and the allocator outside the capture
                self.eager(*inputs)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            outputs = self.eager(*inputs)
        return graph, inputs, outputs

    def __call__(self, features, lengths, channel, time, channel_len):
        batch = features.shape[0]
        size = next((s for s in self.graphs if s >= batch), None)
        if size is None:
            return self.eager(features, lengths, channel, time, channel_len)
        graph, inputs, outputs = self.graphs[size]
        static_features, static_lengths, static_channel, static_time, static_len = inputs
        static_features[:batch].copy_(features)
        static_lengths[:batch].copy_(lengths)
        static_channel[:, :batch].copy_(channel)
        static_time[:, :batch].copy_(time)
        static_len[:batch].copy_(channel_len)
        if batch < size:  # padding rows: full-length silence with empty caches, results ignored
            static_features[batch:].zero_()
            static_lengths[batch:].fill_(self.kind.frames)
            static_channel[:, batch:].zero_()
            static_time[:, batch:].zero_()
            static_len[batch:].zero_()
        graph.replay()
        encoded, encoded_len, channel_out, time_out, len_out = outputs
        return (encoded[:batch], encoded_len[:batch], channel_out[:, :batch], time_out[:, :batch],
                len_out[:batch])
