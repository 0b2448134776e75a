"""Two encoder layers re-laid out for batched streaming steps, with the same weights.

In float32 they give NeMo's results (tested). In bf16 both round, differently, and stay equally close
to float32 (``bench/probes/asr_layers_precision.py``).

In a cache-aware step each stream brings two new frames but attends over ~70 cached ones, so the
step is dominated by data layout, not arithmetic. Profiled on an H200 at 512 streams (random weights,
bf16, ``bench/probes/asr_step_profile.py``), NeMo's layers spent 15 of 53 ms copying and 13 ms in
cuDNN for 1x1 convolutions:

- relative-position attention: ``torch.matmul`` broadcasts the one positional projection to every
  stream and copies it (150 MB per layer at 512 streams), and copies the transposed keys and values
  before each product. Here the positional term is one product per head over all streams' queries,
  and PyTorch's fused attention reads keys and values in place;
- the conformer's pointwise convolutions are plain matrix products (kernel size 1): cuBLAS on the
  time-major layout instead of cuDNN on the channel-major one.

Given a pooled step's ``steps.LayerCaches``, attention extends its cache in the pool's ring in
place of NeMo's two concatenations. Otherwise only inference takes these paths: training, dropout
and autocast fall back to NeMo's own code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from nemo.collections.asr.parts.submodules.multi_head_attention import INF_VAL, RelPositionMultiHeadAttention

from .steps import LayerCaches


class StreamingRelPositionAttention(RelPositionMultiHeadAttention):
    reads_pooled_window = True  # takes a pooled step's ``LayerCaches`` as its cache

    def forward(self, query, key, value, mask, pos_emb, cache=None):
        if isinstance(cache, LayerCaches):  # NeMo's update_cache, in the pool's ring
            key = value = cache.extend(key)
            cache.advance(query.size(1) - self.cache_drop_size)
        elif self.training or torch.is_autocast_enabled():
            return super().forward(query, key, value, mask, pos_emb, cache=cache)
        else:
            key, value, query, cache = self.update_cache(key=key, value=value, query=query, cache=cache)
        batch, heads, width = query.size(0), self.h, self.d_k
        q = self.linear_q(query).view(batch, -1, heads, width)
        k = self.linear_k(key).view(batch, -1, heads, width).transpose(1, 2)
        v = self.linear_v(value).view(batch, -1, heads, width).transpose(1, 2)
        p = self.linear_pos(pos_emb).view(pos_emb.size(0), -1, heads, width)
        scores_bd = self.rel_shift(self._position_scores(q + self.pos_bias_v, p))
        bias = scores_bd[:, :, :, : k.size(-2)] / self.s_d_k
        if mask is not None:
            bias = bias.masked_fill(mask.unsqueeze(1), -INF_VAL)
        out = F.scaled_dot_product_attention((q + self.pos_bias_u).transpose(1, 2), k, v, attn_mask=bias,
                                             scale=1 / self.s_d_k)
        if mask is not None:  # rows with every key masked are zero in NeMo's softmax
            out = out.masked_fill(mask.all(dim=-1)[:, None, :, None], 0.0)
        out = self.linear_out(out.transpose(1, 2).reshape(batch, -1, heads * width))
        return out if cache is None else (out, cache)

    @staticmethod
    def _position_scores(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """(batch, head, time1, positions) from queries (batch, time1, head, d_k) and positional
        projections (1 or batch, positions, head, d_k)."""
        batch, time1, heads, width = q.shape
        if p.size(0) == 1:  # one (heads, batch*time1, d_k) @ (heads, d_k, positions) product
            scores = torch.bmm(q.permute(2, 0, 1, 3).reshape(heads, batch * time1, width),
                               p[0].permute(1, 2, 0))
            return scores.view(heads, batch, time1, -1).transpose(0, 1)
        return torch.matmul(q.transpose(1, 2), p.permute(0, 2, 3, 1))


class PointwiseConv1d(torch.nn.Conv1d):
    """A kernel-size-1 ``Conv1d`` computed as a matrix product over (batch, time, channels)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(x)
        return F.linear(x.transpose(1, 2), self.weight.squeeze(-1), self.bias).transpose(1, 2)


def _is_pointwise(module: torch.nn.Module) -> bool:
    return (type(module) is torch.nn.Conv1d and module.kernel_size == (1,) and module.stride == (1,)
            and module.padding == (0,) and module.dilation == (1,) and module.groups == 1)


def apply(encoder: torch.nn.Module) -> int:
    """Switch the encoder's eligible layers in place (parameters untouched); returns how many."""
    switched = 0
    for module in encoder.modules():
        if type(module) is RelPositionMultiHeadAttention:
            module.__class__ = StreamingRelPositionAttention
        elif _is_pointwise(module):
            module.__class__ = PointwiseConv1d
        else:
            continue
        switched += 1
    return switched

