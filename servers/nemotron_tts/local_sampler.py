"""The local transformer's per-frame sampling, replayed from CUDA graphs.

Each decoded frame, NeMo's ``LocalTransformerHelper.sample_autoregressive`` runs the small local
transformer once per codebook (8 times) and samples a code each time: some 150 tiny kernels, about
22 ms at batch 1 on an H200, half of a frame's time, almost all of it launch overhead. This module
does the same computation with static shapes (forbidden tokens as a precomputed mask, top-k as a
masked fill) so one frame's sampling can be captured per batch-size bucket and replayed.

Same seed, same batch size: the same codes as NeMo's helper (tested on CPU against the helper, and
on the GPU between eager and replay). Batches are padded to a bucket, so a padded batch draws other
random numbers than an unpadded one would: the same distribution, another sample.
"""

from __future__ import annotations

from functools import partial

import torch

from .graphs import GraphPool


def forbidden_masks(codebook_size: int, tokens: int, device: torch.device) -> dict[bool, torch.Tensor]:
    """Tokens never to sample (NeMo's special tokens), without and with end-of-speech, as masks."""
    from nemo.collections.tts.modules.magpietts_modules import SpecialAudioToken

    masks = {}
    for forbid_eos in (False, True):
        mask = torch.zeros(tokens, dtype=torch.bool, device=device)
        mask[SpecialAudioToken.get_forbidden_tokens(codebook_size, forbid_audio_eos=forbid_eos)] = True
        masks[forbid_eos] = mask
    return masks


def draw_top_k(logits: torch.Tensor, forbidden: torch.Tensor, topk: int, temperature: float) -> torch.Tensor:
    """One code per row, as NeMo draws it: special tokens out, top-k kept, softmax at temperature."""
    logits = logits.masked_fill(forbidden, float("-inf"))
    kth = torch.topk(logits, topk, dim=-1)[0][:, -1:]
    logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1)


class LocalSampler:
    def __init__(self, helper, graphs: bool) -> None:
        self.helper = helper
        self.eager = helper.sample_autoregressive  # NeMo's own, for every case not handled here
        self.use_graphs = graphs
        weight = helper.local_transformer_out_projections[0].weight
        self.forbidden = forbidden_masks(helper.codebook_size, weight.shape[0], weight.device)
        self.pool = GraphPool()

    def install(self) -> None:
        self.helper.sample_autoregressive = self

    def __call__(self, dec_output: torch.Tensor, temperature: float = 0.7, topk: int = 80,
                 unfinished_items=None, finished_items=None, use_cfg: bool = False, cfg_scale: float = 1.0,
                 use_kv_cache: bool = True, forbid_audio_eos: bool = False, sanitize_logits: bool = False):
        if unfinished_items or finished_items or sanitize_logits or temperature <= 0.0:
            return self.eager(dec_output, temperature=temperature, topk=topk,
                              unfinished_items=unfinished_items or {}, finished_items=finished_items or {},
                              use_cfg=use_cfg, cfg_scale=cfg_scale, use_kv_cache=use_kv_cache,
                              forbid_audio_eos=forbid_audio_eos, sanitize_logits=sanitize_logits)
        flags = (temperature, topk, use_cfg, cfg_scale, forbid_audio_eos)
        rows = dec_output.shape[0] // 2 if use_cfg else dec_output.shape[0]
        bucket = self.pool.bucket(rows)
        if not self.use_graphs or dec_output.device.type != "cuda" or bucket is None:
            return self.sample(dec_output, *flags)

        def fill(static_in: torch.Tensor) -> None:
            if use_cfg:  # conditional rows, then unconditional rows: each half padded to the bucket
                static_in[:rows] = dec_output[:rows]
                static_in[bucket:bucket + rows] = dec_output[rows:]
            else:
                static_in[:rows] = dec_output

        shape = ((2 * bucket if use_cfg else bucket), dec_output.shape[1])
        function = partial(self._sample_static, flags=flags)
        out = self.pool.run((bucket, *flags), shape, dec_output, function, fill)
        return out[:rows].clone()

    def _sample_static(self, static_in: torch.Tensor, flags: tuple) -> torch.Tensor:
        return self.sample(static_in, *flags)

    def capture_all(self, max_batch: int, width: int, temperature: float, topk: int, use_cfg: bool,
                    cfg_scale: float) -> int:
        """Capture every bucket up to ``max_batch`` now (warmup), rather than on a client's first frame."""
        like = torch.zeros(1, width, device=self.forbidden[False].device)
        for bucket in self.pool.buckets(max_batch):
            for forbid_eos in (True, False):  # NeMo forbids end-of-speech for the first frames
                flags = (temperature, topk, use_cfg, cfg_scale, forbid_eos)
                shape = ((2 * bucket if use_cfg else bucket), width)
                self.pool.capture((bucket, *flags), shape, like, partial(self._sample_static, flags=flags))
        return len(self.pool)

    def sample(self, dec_output: torch.Tensor, temperature: float, topk: int, use_cfg: bool, cfg_scale: float,
               forbid_audio_eos: bool) -> torch.Tensor:
        """NeMo's ``sample_autoregressive`` (no per-item EOS forcing), with static shapes only."""
        helper = self.helper
        helper.local_transformer.reset_cache(use_cache=True)
        inputs = helper.local_transformer_in_projection(dec_output.unsqueeze(1))
        half = inputs.shape[0] // 2 if use_cfg else inputs.shape[0]
        forbidden = self.forbidden[forbid_audio_eos]
        predictions = []
        for codebook in range(helper.num_audio_codebooks * helper.frame_stacking_factor):
            mask = torch.ones(inputs.shape[0], inputs.shape[1], device=inputs.device)
            output = helper.local_transformer(inputs, mask)["output"]
            logits = helper.local_transformer_out_projections[codebook](
                helper.local_transformer_audio_out_projection(output[:, -1, :]))
            if use_cfg:
                guided = cfg_scale * logits[:half] + (1.0 - cfg_scale) * logits[half:]
                logits = torch.cat([guided, logits[half:]])
            codes = draw_top_k(logits, forbidden, topk, temperature)
            if use_cfg:
                codes = torch.cat([codes[:half], codes[:half]])
            predictions.append(codes)
            following = helper.audio_embeddings[codebook](codes.squeeze(-1)).unsqueeze(1)
            following = helper.local_transformer_in_projection(helper.audio_in_projection(following))
            inputs = torch.cat([inputs, following], dim=1)
        codes = torch.cat(predictions, dim=1)
        codes = codes.reshape(-1, helper.frame_stacking_factor, helper.num_audio_codebooks).permute(0, 2, 1)
        return codes[:half] if use_cfg else codes
