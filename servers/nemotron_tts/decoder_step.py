"""Magpie's decoder step with a preallocated KV cache, so one step can be captured in a CUDA graph.

NeMo's cached decoder still feeds the whole sequence through every layer each frame: it grows its
caches by ``torch.cat``, re-runs the feed-forward layers over every past position and projects every
position to logits, about 400 kernels whose shapes change every frame, so nothing can be captured
(H200, batch 32: 19 ms of a 32 ms frame). Here the first call of a generation (the prompt: voice
context plus BOS) still runs through NeMo, and its caches are copied into fixed-size buffers. Every
later call computes only the newest position against those buffers, with the same operations as
NeMo's cached path, padded to a batch bucket and a maximum length, and is replayed from a graph.

NeMo's cached step has two quirks kept here on purpose: a cached query sees every earlier key,
padding included (its mask covers only the query), and the cross-attention prior is the prior's
first row.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from .graphs import GraphPool, bucket_for, buckets_up_to


def _rows(value, start: int, stop: int):
    """``value``'s rows ``[start, stop)``: tensors sliced on their first dimension, lists and tuples
    element by element, anything else as it is."""
    if isinstance(value, torch.Tensor):
        return value[start:stop]
    if isinstance(value, (list, tuple)):
        return type(value)(_rows(item, start, stop) for item in value)
    return value


def _join(parts: list):
    """The inverse of ``_rows`` over consecutive groups: tensors concatenated on their first
    dimension, lists, tuples and dicts joined element by element."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, (list, tuple)):
        return type(first)(_join(list(items)) for items in zip(*parts, strict=True))
    if isinstance(first, dict):
        return {key: _join([part[key] for part in parts]) for key in first}
    return first


def _copy_overlap(target: torch.Tensor, source: torch.Tensor, dim: int) -> None:
    """``source`` into the start of ``target`` along ``dim``, as far as both reach."""
    size = min(target.shape[dim], source.shape[dim])
    target.narrow(dim, 0, size).copy_(source.narrow(dim, 0, size))


def _product(activations: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """``activations @ cache`` in the cache's type (a no-op cast when it is the model's), the result in
    the activations' type."""
    return torch.matmul(activations.to(cache.dtype), cache).to(activations.dtype)


def supported(model) -> str | None:
    """Why the static step cannot stand in for this model's decoder, or None if it can."""
    decoder = model.decoder
    if not hasattr(decoder, "layers") or decoder.use_moe:
        return "decoder is not NeMo's dense transformer"
    for layer in decoder.layers:
        if not layer.has_xattn or getattr(layer.pos_ff, "proj", None) is None:
            return "decoder layers without cross-attention or a convolution feed-forward"
        if layer.pos_ff.proj.kernel_size != 1:
            return "decoder feed-forward kernel is wider than one frame"
    if model.model_type == "multi_encoder_context_tts":
        return "multi-encoder models cross-attend several inputs"
    return None


class StaticDecoder:
    """Fixed-size caches for up to ``max_rows`` decoder rows (CFG rows count twice)."""

    def __init__(self, model, max_rows: int, max_positions: int, max_text: int = 256,
                 graphs: bool = True, prefill_rows: int = 0, cache_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.decoder = model.decoder
        self.layers = list(self.decoder.layers)
        weight = model.final_proj.weight
        self.device, self.dtype = weight.device, weight.dtype
        # The keys and values are most of the server's memory at a large batch (every row holds room
        # for the model's longest sentence). In a narrower type, attention's two products read them
        # as they are stored (widening them each step would copy every cache, a temporary per layer
        # that each graph keeps); scores, softmax, prior and all else stay in the model's type.
        self.cache_dtype = cache_dtype or self.dtype
        self.max_rows = max_rows
        # The prompt's rows NeMo runs at a time (0: all). NeMo's pass keeps every layer's keys, values
        # and text memory for all its rows until they are copied into the fixed caches, the server's
        # largest transient, which the caching allocator then keeps reserved; each further group is a
        # pass of its own before anyone's first frame, launch-bound and about as long as a whole one
        # (bench/results/memory-h200-run9.md).
        self.prefill_rows = prefill_rows
        self.use_graphs = graphs and self.device.type == "cuda"
        self.pool = GraphPool()
        self.width = int(model.cfg.decoder.d_model)
        params = model.inference_parameters
        layers = params.apply_prior_to_layers
        # Which layers NeMo's loop gives the attention prior (its usual layout, captured at warmup)
        self.prior_layers = tuple(bool(params.apply_attention_prior and (layers is None or index in layers))
                                  for index in range(len(self.layers)))
        self._allocate(max_positions, max_text)
        self.rows = 0
        self.primed = False
        self._targets: list[int] | None = None

    def _allocate(self, positions: int, text: int) -> None:
        self.max_positions, self.max_text = positions, text
        rows, device, dtype = self.max_rows, self.device, self.dtype
        self_shape = [(rows, layer.self_attention.n_heads, positions, layer.self_attention.d_head)
                      for layer in self.layers]
        cross_shape = [(rows, layer.cross_attention.n_heads, text, layer.cross_attention.d_head)
                       for layer in self.layers]
        cache = self.cache_dtype
        self.self_k = [torch.zeros(s, device=device, dtype=cache) for s in self_shape]
        self.self_v = [torch.zeros(s, device=device, dtype=cache) for s in self_shape]
        self.cross_k = [torch.zeros(s, device=device, dtype=cache) for s in cross_shape]
        self.cross_v = [torch.zeros(s, device=device, dtype=cache) for s in cross_shape]
        self.text_mask = torch.zeros(rows, text, dtype=torch.bool, device=device)
        self.text_mask[:, 0] = True  # rows beyond a batch stay finite
        self.prior = torch.ones(len(self.layers), rows, text, device=device, dtype=dtype)
        self.frame = torch.zeros(rows, self.width, device=device, dtype=dtype)
        self.position = torch.zeros(rows, dtype=torch.long, device=device)
        self.key_index = torch.arange(positions, device=device)
        self.pool = GraphPool()  # graphs captured the old buffers

    def _grow(self, positions: int, text: int) -> None:
        """Larger buffers in which the rows already cached keep what they hold: an item joining a
        running batch (continuous batching) may need more room than the others have."""
        caches = (self.self_k, self.self_v, self.cross_k, self.cross_v)
        text_mask, prior, position = self.text_mask, self.prior, self.position
        self._allocate(positions, text)
        for new, kept in zip((self.self_k, self.self_v, self.cross_k, self.cross_v), caches, strict=True):
            for new_layer, kept_layer in zip(new, kept, strict=True):
                _copy_overlap(new_layer, kept_layer, dim=2)
        _copy_overlap(self.text_mask, text_mask, dim=1)
        _copy_overlap(self.prior, prior, dim=2)
        self.position = position

    # -- the generation loop's side -------------------------------------------------------------

    @contextmanager
    def installed(self, targets: list[int] | None = None):
        """Stand in for ``model.forward`` for one ``generate_speech`` call; the prompt's caches go to
        rows ``targets`` (default: the first rows)."""
        self.primed = False
        self._targets = targets
        self.model.forward = self.forward
        try:
            yield
        finally:
            del self.model.forward
            self.primed = False
            self._targets = None

    def forward(self, dec_input_embedded, dec_input_mask, cond, cond_mask, attn_prior, multi_encoder_mapping):
        """``MagpieTTSModel.forward``'s signature and results (logits and output of the newest position)."""
        if self.primed:
            return self._step_newest(dec_input_embedded, attn_prior)
        return self._prefill(dec_input_embedded, dec_input_mask, cond, cond_mask, attn_prior,
                             multi_encoder_mapping)

    def _step_newest(self, dec_input_embedded, attn_prior):
        rows, length = dec_input_embedded.shape[:2]
        if rows != self.rows or length != self.length + 1:
            raise RuntimeError(f"decoder step out of order: {rows} rows at length {length}, "
                               f"expected {self.rows} at {self.length + 1}")
        self.length = length
        priors = [None if prior is None else prior[:, 0] for prior in self._layer_priors(attn_prior)]
        self.position[:rows] = length - 1
        logits, output, probs = self.run(rows, dec_input_embedded[:, -1], priors)
        attention = [{"self_attn_probabilities": None,
                      "cross_attn_probabilities": [p[:, :, :, : self.text], None]} for p in probs]
        return logits[:, None], attention, output[:, None], None

    def run(self, rows: int, frames: torch.Tensor, priors: list) -> tuple:
        """The newest position of rows ``[0, rows)``: ``frames`` are their embedded inputs, positions
        are in ``self.position``, ``priors`` per layer a (rows, text) prior, True for the prior
        already in ``self.prior``, or None for none. Returns logits, output and each layer's
        cross-attention probabilities, views of buffers that the next call overwrites."""
        self.frame[:rows] = frames
        for index, prior in enumerate(priors):
            if isinstance(prior, torch.Tensor):
                self.prior[index, :rows, : prior.shape[-1]] = prior
        with_prior = tuple(prior is not None for prior in priors)
        bucket = bucket_for(rows, self.max_rows) if self.use_graphs else None
        if bucket is None:
            logits, output, probs = self.step(rows, with_prior)
        else:
            key = (bucket, with_prior)
            logits, output, probs = self.pool.call(key, lambda: self.step(bucket, with_prior))
        return logits[:rows], output[:rows], [p[:rows] for p in probs]

    def move(self, source: list[int], target: list[int]) -> None:
        """Copy whole rows (caches, text mask, prior, position): compacts the rows of live items."""
        src = torch.tensor(source, device=self.device)
        dst = torch.tensor(target, device=self.device)
        for buffers in (self.self_k, self.self_v, self.cross_k, self.cross_v):
            for buffer in buffers:
                buffer.index_copy_(0, dst, buffer.index_select(0, src))
        self.text_mask.index_copy_(0, dst, self.text_mask.index_select(0, src))
        self.prior.index_copy_(1, dst, self.prior.index_select(1, src))
        self.position.index_copy_(0, dst, self.position.index_select(0, src))

    def _prefill(self, dec_input_embedded, dec_input_mask, cond, cond_mask, attn_prior, encoder_mapping):
        rows, length = dec_input_embedded.shape[:2]
        text = cond.shape[1]
        if rows > self.max_rows:
            raise RuntimeError(f"{rows} decoder rows exceed the {self.max_rows} allocated")
        positions = length + self.model.inference_parameters.max_decoder_steps + 1
        if positions > self.max_positions or text > self.max_text:
            self._grow(max(self.max_positions, positions), max(self.max_text, -(-text // 64) * 64))
        targets = torch.tensor(self._targets or range(rows), device=self.device)
        inputs = (dec_input_embedded, dec_input_mask, cond, cond_mask, attn_prior)
        results = []
        group = self.prefill_rows or rows
        for start in range(0, rows, group):
            stop = min(rows, start + group)
            self.decoder.reset_cache(use_cache=True)
            results.append(type(self.model).forward(self.model, *_rows(inputs, start, stop), encoder_mapping))
            rows_here = targets[start:stop]
            cache = self.cache_dtype
            for index, layer in enumerate(self.layers):
                own, cross = layer.self_attention.cache, layer.cross_attention.cache
                self.self_k[index][rows_here, :, :length] = own["self_k"].transpose(1, 2).to(cache)
                self.self_v[index][rows_here, :, :length] = own["self_v"].transpose(1, 2).to(cache)
                self.cross_k[index][rows_here, :, :text] = cross["cross_k"].transpose(1, 2).to(cache)
                self.cross_v[index][rows_here, :, :text] = cross["cross_v"].transpose(1, 2).to(cache)
        self.decoder.reset_cache(use_cache=True)  # free NeMo's copies; later steps never read them
        result = results[0] if len(results) == 1 else _join(results)
        self.text_mask[targets] = False
        self.text_mask[targets, :text] = cond_mask
        self.prior[:, targets] = 1.0
        self.rows, self.length, self.text, self.primed = rows, length, text, True
        return result

    def _layer_priors(self, attn_prior) -> list:
        if isinstance(attn_prior, list):
            return list(attn_prior)
        return [attn_prior] * len(self.layers)

    # -- the static step --------------------------------------------------------------------------

    def step(self, rows: int, with_prior: tuple[bool, ...]):
        """The newest position of ``rows`` rows through every layer, as NeMo's cached path computes it."""
        decoder = self.decoder
        x = self.frame[:rows, None]
        position = self.position[:rows]
        if decoder.use_learnable_pos_emb:
            x = x + decoder.position_embeddings(position)[:, None]
        keys = (self.key_index[None] <= position[:, None])[:, None, None]  # (rows, 1, 1, positions)
        text_mask = self.text_mask[:rows, None, None]
        probs = []
        for index, layer in enumerate(self.layers):
            x = x + self._self_attention(layer.self_attention, layer.norm_self(x), index, position, keys)
            prior = self.prior[index, :rows] if with_prior[index] else None
            attended, prob = self._cross_attention(layer.cross_attention, layer.norm_xattn_query(x), index,
                                                   text_mask, prior)
            x = x + attended
            probs.append(prob)
            x = x + layer.pos_ff(layer.norm_pos_ff(x), torch.ones_like(x[..., 0]))
        output = decoder.dropout_out(decoder.norm_out(x))[:, 0]
        return self.model.final_proj(output), output, probs

    def _self_attention(self, attention, query, index, position, keys):
        rows, heads, size = query.shape[0], attention.n_heads, attention.d_head
        qkv = attention.qkv_net(query).reshape(rows, 1, 3, heads, size)
        q, k, v = (part.squeeze(2).transpose(1, 2) for part in qkv.chunk(3, dim=2))  # (rows, heads, 1, size)
        slots = torch.arange(rows, device=self.device)
        self.self_k[index][slots, :, position] = k[:, :, 0].to(self.cache_dtype)
        self.self_v[index][slots, :, position] = v[:, :, 0].to(self.cache_dtype)
        key, value = self.self_k[index][:rows], self.self_v[index][:rows]
        score = _product(q, key.transpose(2, 3)) * attention.scale
        score = score.masked_fill(~keys, float("-inf"))
        y = _product(torch.softmax(score, dim=-1), value)
        return attention.o_net(y.transpose(1, 2).reshape(rows, 1, -1))

    def _cross_attention(self, attention, query, index, text_mask, prior):
        rows = query.shape[0]
        q = attention.q_net(query).reshape(rows, 1, attention.n_heads, attention.d_head).transpose(1, 2)
        key, value = self.cross_k[index][:rows], self.cross_v[index][:rows]
        score = _product(q, key.transpose(2, 3)) * attention.scale
        score = score.masked_fill(~text_mask, float("-inf"))
        prob = torch.softmax(score, dim=-1)
        if prior is not None:
            prob = prob * (prior[:, None, None] + torch.finfo(prior.dtype).tiny)
            prob = prob / prob.sum(dim=-1, keepdim=True)
        prob = prob.masked_fill(~text_mask, 0.0)
        y = _product(prob, value)
        return attention.o_net(y.transpose(1, 2).reshape(rows, 1, -1)), prob

    def capture_all(self, max_rows: int) -> int:
        """Capture the usual prior layout for every bucket now (warmup), not on a client's frame."""
        if not self.use_graphs:
            return 0
        for bucket in buckets_up_to(min(max_rows, self.max_rows)):
            self.pool.call((bucket, self.prior_layers),
                           lambda bucket=bucket: self.step(bucket, self.prior_layers))
        return len(self.pool)
