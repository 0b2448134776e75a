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
from nemo.collections.asr.parts.submodules.conformer_modules import ConformerLayer
from nemotron_common.cuda_graphs import capture
from nemotron_common.devices import index_tensor


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


def most_new_frames(kinds: dict[str, StepKind], subsampling_factor: int) -> int:
    """The most encoder frames a step of any kind brings: its input frames subsampled (rounded up),
    and one to spare."""
    return -(-max(kind.frames for kind in kinds.values()) // subsampling_factor) + 1


class CachePool:
    """Encoder caches of every stream, one slot per stream, read and written per step.

    A stream's attention (channel) cache is a window of the last frames each layer attends to. It
    lives in a ring with room for one step's new frames after the window: a step writes its new
    frames there, attention reads window and new frames with one gather, and the window then moves on
    by the frames kept. NeMo instead concatenates cache and new frames, then builds the next cache by
    another concatenation, and a pool would copy it back: a third of a 512-stream step on the H200
    moved cache memory that way (bench/results/asr-h200-run25-profile.txt).

    One extra slot past the streams' takes the padding rows of graph steps, so a padded step
    never touches a stream's caches."""

    def __init__(self, encoder, slots: int, dtype: torch.dtype, device: torch.device,
                 new_frames: int) -> None:
        channel, time, channel_len = encoder.get_initial_cache_state(batch_size=1, dtype=dtype, device=device)
        layers, _, self.window, width = channel.shape
        rows = slots + 1
        self.room = new_frames  # the most new frames a step may bring
        self.ring = self.window + new_frames  # rows of one stream's ring
        self.channel = torch.zeros(layers, rows * self.ring, width, dtype=dtype, device=device)
        self.start = torch.zeros(rows, dtype=torch.long, device=device)  # each ring's window start
        self.time = time.new_zeros(layers, rows, *time.shape[2:])
        self.channel_len = channel_len.new_zeros(rows)
        self.padding_slot = slots
        self.free = list(range(slots - 1, -1, -1))

    def acquire(self) -> int:
        """A free slot; its owner resets it (StreamingModel.reset_streams) before use."""
        return self.free.pop()

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def check_room(self, frames: int) -> None:
        if frames > self.room:
            raise ValueError(f"a step brought {frames} new frames; the cache rings hold {self.room}")

    def rows(self, index: torch.Tensor, first: int, count: int) -> torch.Tensor:
        """Rows of ``channel``'s rings, stream by stream: frames ``first .. first + count`` counted
        from each window's start (frames past the window are the ring's room for new ones)."""
        offsets = self.start.index_select(0, index)[:, None] + torch.arange(first, first + count,
                                                                              device=index.device)
        return (index[:, None] * self.ring + offsets % self.ring).reshape(-1)

    def reset(self, slots: list[int]) -> None:
        index = index_tensor(slots, self.channel.device)
        self.start.index_fill_(0, index, 0)
        self.channel.index_fill_(1, self.rows(index, 0, self.ring), 0.0)
        self.time.index_fill_(1, index, 0.0)
        self.channel_len.index_fill_(0, index, 0)

    def advance(self, index: torch.Tensor, frames: int) -> None:
        """Move the streams' windows on by ``frames`` once a step has used them."""
        self.start.index_copy_(0, index, (self.start.index_select(0, index) + frames) % self.ring)

    def gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copies of the streams' caches in NeMo's stacked layout."""
        layers, _, width = self.channel.shape
        channel = self.channel.index_select(1, self.rows(index, 0, self.window))
        return (channel.view(layers, index.numel(), self.window, width), self.time.index_select(1, index),
                self.channel_len.index_select(0, index))

    def scatter(self, index: torch.Tensor, channel, time, channel_len) -> None:
        """Store the streams' new caches, given in NeMo's stacked layout (each window from its
        ring's first row)."""
        self.start.index_fill_(0, index, 0)
        rows = channel.reshape(channel.size(0), -1, channel.size(-1))
        self.channel.index_copy_(1, self.rows(index, 0, self.window), rows.to(self.channel.dtype))
        self.time.index_copy_(1, index, time.to(self.time.dtype))
        self.channel_len.index_copy_(0, index, channel_len.to(self.channel_len.dtype))


class StepCaches:
    """The caches of one step's streams, read and written layer by layer in the pool.

    NeMo's encoder step takes every layer's caches as one tensor and returns all new ones stacked:
    for a batch that is a gathered copy of the caches, the layers' new caches and their stacked
    copy, three times the streams' cache memory at once, in the scratch of the largest CUDA graph
    (bench/results/memory-h200-run5.md). Passed in place of those tensors, this hands each layer its
    streams' caches (``LayerCaches``), so a step holds one layer's caches at a time. Every layer
    gets the same number of new frames, so the ring rows are worked out once a step."""

    def __init__(self, pool: CachePool, index: torch.Tensor) -> None:
        self.pool, self.index = pool, index
        self.kept: int | None = None  # frames the windows move on by, once every layer ran
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __getitem__(self, layer: int) -> LayerCaches:
        return LayerCaches(self, layer)

    def rows(self, new_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ring rows of the streams' new frames, and of their windows followed by those frames."""
        if new_frames not in self._rows:
            pool = self.pool
            pool.check_room(new_frames)
            extended = pool.rows(self.index, 0, pool.window + new_frames)
            self._rows[new_frames] = (pool.rows(self.index, pool.window, new_frames), extended)
        return self._rows[new_frames]


class LayerCaches:
    """One layer's caches for one step. Attention that knows the ring (``reads_pooled_window``)
    extends the window in place; any other gets a copy of it and gives back its new one."""

    def __init__(self, step: StepCaches, layer: int) -> None:
        self.step, self.layer = step, layer

    def extend(self, new: torch.Tensor) -> torch.Tensor:
        """Write the streams' ``new`` frames (B, T, D) after their windows; returns window and new
        frames, (B, window + T, D), what attention attends to."""
        batch, frames, width = new.shape
        new_rows, extended = self.step.rows(frames)
        ring = self.step.pool.channel[self.layer]
        ring.index_copy_(0, new_rows, new.reshape(-1, width).to(ring.dtype))
        return ring.index_select(0, extended).view(batch, -1, width)

    def advance(self, frames: int) -> None:
        """After the step the windows move on by ``frames`` (NeMo's next cache: the window's last
        rows, then the first ``frames`` new ones)."""
        self.step.kept = frames

    def read(self) -> torch.Tensor:
        pool, step = self.step.pool, self.step
        channel = pool.channel[self.layer].index_select(0, pool.rows(step.index, 0, pool.window))
        return channel.view(step.index.numel(), pool.window, -1)

    def replace(self, channel: torch.Tensor, kept: int) -> None:
        """Store a whole new window (B, window, D), which starts ``kept`` frames after the old one."""
        pool, step = self.step.pool, self.step
        pool.check_room(kept)
        channel = channel[:, -pool.window:, :]  # as NeMo's streaming_post_process trims the caches
        ring = pool.channel[self.layer]
        ring.index_copy_(0, pool.rows(step.index, kept, pool.window),
                         channel.reshape(-1, channel.size(-1)).to(ring.dtype))
        self.advance(kept)

    def read_time(self) -> torch.Tensor:
        return self.step.pool.time[self.layer].index_select(0, self.step.index)

    def keep_time(self, time: torch.Tensor) -> None:
        pool = self.step.pool
        pool.time[self.layer].index_copy_(0, self.step.index, time.to(pool.time.dtype))


class PooledCacheLayer(ConformerLayer):
    """NeMo's conformer layer, reading and writing its caches through ``LayerCaches`` when given
    them; anything else goes to NeMo's layer unchanged."""

    def forward(self, x, att_mask=None, pos_emb=None, pad_mask=None, cache_last_channel=None,
                cache_last_time=None):
        if not isinstance(cache_last_channel, LayerCaches):
            return super().forward(x, att_mask=att_mask, pos_emb=pos_emb, pad_mask=pad_mask,
                                   cache_last_channel=cache_last_channel, cache_last_time=cache_last_time)
        caches = cache_last_channel
        if getattr(self.self_attn, "reads_pooled_window", False):
            x, _, time = super().forward(x, att_mask=att_mask, pos_emb=pos_emb, pad_mask=pad_mask,
                                         cache_last_channel=caches, cache_last_time=caches.read_time())
        else:
            frames = x.size(1)
            x, channel, time = super().forward(x, att_mask=att_mask, pos_emb=pos_emb, pad_mask=pad_mask,
                                               cache_last_channel=caches.read(),
                                               cache_last_time=caches.read_time())
            caches.replace(channel, frames - self.self_attn.cache_drop_size)
        caches.keep_time(time)
        empty = x.new_empty(0)  # what NeMo stacks in place of the caches, which are already kept
        return x, empty, empty


def pool_layers(encoder) -> int:
    """Switch the encoder's conformer layers to ``PooledCacheLayer`` in place; returns how many."""
    layers = [m for m in encoder.modules() if type(m) is ConformerLayer]
    for layer in layers:
        layer.__class__ = PooledCacheLayer
    return len(layers)


# Buckets of at most this many streams read and write their caches stacked, as NeMo does; larger
# ones layer by layer. Layer by layer holds one layer's caches at a time instead of three copies of
# every layer's, which is what bounds a large bucket's graph memory, but it takes four small copies
# per layer: at 1-16 streams that costs more time (about 0.3 ms a step) than the stacked copies,
# whose memory there is small (bench/results/asr-h200-run16.md, asr-h200-run19.md).
STACKED_UP_TO = 16


class EagerStep:
    """One step of ``kind`` for the streams whose cache slots are ``index``; returns the encoder
    output and its lengths and keeps the streams' new caches in the pool.

    This is NeMo's ``cache_aware_stream_step`` (the encoder's ``forward`` and
    ``streaming_post_process``). ``layered``: the caches are handed over layer by layer
    (``StepCaches``; the encoder's layers must be switched by ``pool_layers``); otherwise the
    streams' caches are gathered into NeMo's stacked layout and its new ones scattered back."""

    def __init__(self, encoder, kind: StepKind, pool: CachePool, layered: bool = True) -> None:
        self.encoder, self.kind, self.pool, self.layered = encoder, kind, pool, layered

    def __call__(self, features, lengths, index):
        if not self.layered:
            return self._stacked(features, lengths, index)
        encoder, cfg = self.encoder, self.encoder.streaming_cfg
        caches = StepCaches(self.pool, index)
        channel_len = self.pool.channel_len.index_select(0, index)
        encoder.update_max_seq_length(seq_length=features.size(2), device=features.device)
        usual = cfg.drop_extra_pre_encoded
        cfg.drop_extra_pre_encoded = self.kind.drop_extra_pre_encoded
        try:
            encoded, encoded_len, _, _, channel_len = encoder.forward_internal(
                features, lengths, cache_last_channel=caches, cache_last_time=caches,
                cache_last_channel_len=channel_len)
        finally:
            cfg.drop_extra_pre_encoded = usual
        trim = not self.kind.keep_all_outputs or encoder.att_context_style == "regular"
        if cfg.valid_out_len > 0 and trim:
            encoded = encoded[:, :, : cfg.valid_out_len]
            encoded_len = torch.clamp(encoded_len, max=cfg.valid_out_len)
        self.pool.channel_len.index_copy_(0, index, channel_len.to(self.pool.channel_len.dtype))
        if caches.kept is not None:
            self.pool.advance(index, caches.kept)
        return encoded, encoded_len

    def _stacked(self, features, lengths, index):
        channel, time, channel_len = self.pool.gather(index)
        encoded, encoded_len, channel, time, channel_len = self.encoder.cache_aware_stream_step(
            processed_signal=features, processed_signal_length=lengths, cache_last_channel=channel,
            cache_last_time=time, cache_last_channel_len=channel_len,
            keep_all_outputs=self.kind.keep_all_outputs,
            drop_extra_pre_encoded=self.kind.drop_extra_pre_encoded)
        self.pool.scatter(index, channel, time, channel_len)
        return encoded, encoded_len


class GraphStep:
    """Replays a captured step, cache gather and scatter included; batches are padded up to the
    smallest bucket that holds them, the padding rows pointing at the pool's padding slot.
    Buckets are captured one by one (``add``); a batch larger than every bucket runs eagerly.
    Small buckets use stacked caches, larger ones layer by layer (``STACKED_UP_TO``)."""

    def __init__(self, encoder, kind: StepKind, pool: CachePool, dtype: torch.dtype) -> None:
        self.eager = EagerStep(encoder, kind, pool)
        self.encoder, self.kind, self.pool, self.dtype = encoder, kind, pool, dtype
        self.graphs: dict[int, tuple] = {}  # by bucket, ascending

    def add(self, size: int) -> None:
        self.graphs[size] = self._capture(self.encoder, size, self.dtype)
        self.graphs = dict(sorted(self.graphs.items()))

    def _capture(self, encoder, size: int, dtype: torch.dtype):
        device = next(encoder.parameters()).device
        features = torch.zeros(size, encoder._feat_in, self.kind.frames, device=device, dtype=dtype)
        lengths = torch.full((size,), self.kind.frames, device=device, dtype=torch.long)
        index = torch.full((size,), self.pool.padding_slot, device=device, dtype=torch.long)
        inputs = (features, lengths, index)
        step = EagerStep(encoder, self.kind, self.pool, layered=size > STACKED_UP_TO)
        # The outputs stay in the pool: each step's are consumed (decoded) on the engine's stream
        # before the next encoder step replays.
        graph, outputs = capture(lambda: step(*inputs), warmup_runs=3, copy_outputs=False)
        return graph, inputs, outputs

    def __call__(self, features, lengths, index):
        batch = features.shape[0]
        size = next((s for s in self.graphs if s >= batch), None)
        if size is None:
            return self.eager(features, lengths, index)
        graph, (static_features, static_lengths, static_index), (encoded, encoded_len) = self.graphs[size]
        static_features[:batch].copy_(features)
        static_lengths[:batch].copy_(lengths)
        static_index[:batch].copy_(index)
        if batch < size:  # padding rows: full-length silence on the padding slot, results ignored
            static_features[batch:].zero_()
            static_lengths[batch:].fill_(self.kind.frames)
            static_index[batch:].fill_(self.pool.padding_slot)
        graph.replay()
        return encoded[:batch], encoded_len[:batch]
