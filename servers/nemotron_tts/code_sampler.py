"""NeMo's ``sample_codes_from_logits``, replayed from CUDA graphs.

Every frame, after the local transformer has sampled the codes, NeMo's loop samples the decoder's
own logits again at temperature 0.01 and top-1 to detect end of speech: 8 codebooks of small kernels,
about 3 ms per frame on an H200, all launch overhead. Same computation, static shapes (forbidden
tokens as a mask, top-k as a masked fill), captured per batch bucket; the same codes as NeMo's for the
same seed (tested). NeMo's version also writes -inf into its input in place; nothing reads that later.
"""

from __future__ import annotations

from functools import partial

import torch

from .graphs import GraphPool
from .local_sampler import draw_top_k, forbidden_masks


class CodeSampler:
    def __init__(self, model, graphs: bool) -> None:
        self.model = model
        self.eager = model.sample_codes_from_logits  # NeMo's own, for per-item EOS forcing
        self.use_graphs = graphs
        device = model.final_proj.weight.device
        self.forbidden = forbidden_masks(model.codebook_size, model.num_all_tokens_per_codebook, device)
        self.pool = GraphPool()

    def install(self) -> None:
        self.model.sample_codes_from_logits = self

    def __call__(self, all_code_logits_t: torch.Tensor, temperature: float = 0.7, topk: int = 80,
                 unfinished_items=None, finished_items=None, forbid_audio_eos: bool = False) -> torch.Tensor:
        if unfinished_items or finished_items:
            return self.eager(all_code_logits_t, temperature=temperature, topk=topk,
                              unfinished_items=unfinished_items, finished_items=finished_items,
                              forbid_audio_eos=forbid_audio_eos)
        flags = (temperature, topk, forbid_audio_eos)
        rows = all_code_logits_t.shape[0]
        bucket = self.pool.bucket(rows)
        if not self.use_graphs or all_code_logits_t.device.type != "cuda" or bucket is None:
            return self.sample(all_code_logits_t, *flags)

        def fill(static_in: torch.Tensor) -> None:
            static_in[:rows] = all_code_logits_t

        function = partial(self._sample_static, flags=flags)
        shape = (bucket, all_code_logits_t.shape[1])
        out = self.pool.run((bucket, *flags), shape, all_code_logits_t, function, fill)
        return out[:rows].clone()

    def _sample_static(self, static_in: torch.Tensor, flags: tuple) -> torch.Tensor:
        return self.sample(static_in, *flags)

    def capture_all(self, max_batch: int, temperature: float, topk: int) -> int:
        model = self.model
        width = model.num_all_tokens_per_codebook * model.num_audio_codebooks * model.frame_stacking_factor
        like = torch.zeros(1, width, device=self.forbidden[False].device)
        for bucket in self.pool.buckets(max_batch):
            for forbid_eos in (True, False):
                flags = (temperature, topk, forbid_eos)
                function = partial(self._sample_static, flags=flags)
                self.pool.capture((bucket, *flags), (bucket, width), like, function)
        return len(self.pool)

    def sample(self, logits: torch.Tensor, temperature: float, topk: int,
               forbid_audio_eos: bool) -> torch.Tensor:
        model = self.model
        tokens, codebooks = model.num_all_tokens_per_codebook, model.num_audio_codebooks
        forbidden = self.forbidden[forbid_audio_eos]
        stacked = []
        for stack in range(model.frame_stacking_factor):
            codes = []
            for codebook in range(codebooks):
                start = (codebook + codebooks * stack) * tokens
                codes.append(draw_top_k(logits[:, start:start + tokens], forbidden, topk, temperature))
            stacked.append(torch.cat(codes, dim=1))
        return torch.stack(stacked, dim=2)
