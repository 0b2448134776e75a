"""Continuous batching: utterances join the running batch at any decoder step and leave at their end.

NeMo's ``generate_speech`` runs a fixed batch from its first frame to the last frame of its longest
item, so a segment that arrives while it runs waits for all of it. Here every item keeps its own
state (step, attention-prior bookkeeping, its rows in the static decoder's caches). A joining group
runs NeMo's own preparation and prompt pass (text encoder, voice context, prefill), with its caches
copied into free rows; every later step runs all live items through the static decoder step. The
per-step work after the decoder is NeMo's, in NeMo's order, so a group that starts together draws
the codes ``generate_speech`` draws for the same seed (tested).

Rows: without CFG item ``i`` owns row ``i``; with CFG its conditional and unconditional rows are
``2i`` and ``2i + 1``. When an item leaves, the last item moves into its rows, so live rows stay
contiguous and one step covers ``[0, rows)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .eos import end_frames
from .model import SpeechModel, Utterance


@dataclass(eq=False)
class _Item:
    utterance: Utterance
    text_len: int
    context: int  # prompt positions before BOS (the voice context, padded within its group)
    step: int = 0  # frames made so far
    last_attended: int = 1
    counter: dict = field(default_factory=dict)  # text position -> steps attended
    unfinished: bool = True
    finished_count: int | None = None
    codes: torch.Tensor | None = None  # the newest frame, (codebooks, 1)


class ContinuousBatch:
    """Live utterances of one engine; admit new ones between steps, step them all together."""

    def __init__(self, speech: SpeechModel) -> None:
        if speech.static is None or len(speech.static.layers) == 0:
            raise ValueError("continuous batching needs the static decoder step")
        self.speech = speech
        self.model = speech.model
        self.static = speech.static
        self.cfg = speech.use_cfg
        self.rows_per_item = speech.rows_per_utterance
        self.items: list[_Item] = []
        params = self.model.inference_parameters
        self.params = params
        self.prior_layers = self.static.prior_layers
        from nemo.collections.tts.models.magpietts import EOSDetectionMethod

        self.eos_method = EOSDetectionMethod(params.eos_detection_method)

    @property
    def capacity(self) -> int:
        return self.static.max_rows // self.rows_per_item

    def __len__(self) -> int:
        return len(self.items)

    def clear(self) -> None:
        self.items.clear()

    # -- joining ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def admit(self, utterances: list[Utterance]) -> None:
        """Prepare and run the prompt of ``utterances`` (single-chunk ones) as a group; their first
        frame is handed out before this returns."""
        if not utterances:
            return
        if len(self.items) + len(utterances) > self.capacity:
            raise ValueError(f"{len(utterances)} more utterances exceed the batch's {self.capacity}")
        model, device = self.model, self.speech.device
        group = len(utterances)
        tokens = [u.chunks[0] for u in utterances]
        batch = {
            "text": torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True).to(device),
            "text_lens": torch.tensor([len(t) for t in tokens], dtype=torch.long, device=device),
            "speaker_indices": [u.speaker for u in utterances],
        }
        # generate_speech's preparation for a first and only chunk, call for call
        state = model.create_chunk_state(batch_size=group)
        current = batch["text_lens"].clone()
        batch, max_text_len = model._prepare_chunked_text_tensors(state, batch, current, True, device)
        context = model.prepare_context_tensors(batch)
        model._update_context_from_history(state, context, current, max_text_len, True, batch["text_lens"],
                                           group)
        dummy = (model.prepare_dummy_cond_for_cfg(context.cond, context.cond_mask,
                                                  context.additional_decoder_input,
                                                  context.additional_decoder_mask)[:4]
                 if self.cfg else (None,) * 4)
        prior = model._initialize_chunked_attn_prior(state, current, batch["text_lens"], max_text_len, group,
                                                     self.cfg, self.params.attention_prior_epsilon, device)
        stack = model.frame_stacking_factor
        bos = torch.full((group, model.num_audio_codebooks, stack), model.audio_bos_id, dtype=torch.long,
                         device=device)
        embedded, lens = model.embed_audio_tokens(bos, torch.full((group,), stack, device=device))
        mask = (torch.arange(embedded.shape[1], device=device)[None] < lens[:, None])
        extra = context.additional_decoder_input
        width = 0 if extra is None else extra.shape[1]
        if extra is not None:
            embedded = torch.cat([extra, embedded], dim=1)
            mask = torch.cat([context.additional_decoder_mask, mask], dim=1)
        if self.prior_layers and prior is not None:
            prior = [prior if on else None for on in self.prior_layers]

        first = len(self.items) * self.rows_per_item
        targets = [first + self.rows_per_item * k for k in range(group)]
        if self.cfg:
            targets += [row + 1 for row in targets]  # NeMo's rows: conditional ones, then unconditional
        with self.static.installed(targets):
            logits, attention, output = model._run_chunked_forward_with_cfg(
                context_tensors=context, audio_codes_embedded=embedded, audio_codes_mask=mask,
                attn_prior=prior, use_cfg=self.cfg, cfg_scale=self.params.cfg_scale,
                dummy_cond=dummy[0], dummy_cond_mask=dummy[1], dummy_additional_decoder_input=dummy[2],
                dummy_addition_dec_mask=dummy[3], batch_size=group)
        lens = context.text_lens.tolist()
        new = [_Item(u, lens[k], width) for k, u in enumerate(utterances)]
        self.items += new
        self._after_decoder(new, logits[:, -1, :], output[:, -1, :], attention)

    # -- stepping ---------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> None:
        """One decoder step for every live item."""
        if not self.items:
            return
        model, static = self.model, self.static
        rows = len(self.items) * self.rows_per_item  # joined items made their frame in admit()
        codes = torch.stack([item.codes for item in self.items])  # (items, codebooks, 1)
        stack = model.frame_stacking_factor
        frames, _ = model.embed_audio_tokens(codes, torch.full((len(codes),), stack, device=codes.device))
        frames = frames[:, -1]
        positions = torch.tensor([item.context + item.step for item in self.items], device=codes.device)
        if self.cfg:
            frames = frames.repeat_interleave(2, dim=0)
            positions = positions.repeat_interleave(2)
        static.position[:rows] = positions
        logits, output, probs = static.run(rows, frames, [True if on else None for on in self.prior_layers])
        if self.cfg:
            order = torch.arange(rows, device=output.device).view(-1, 2).t().reshape(-1)  # cond rows first
            cond, uncond = logits[0::2], logits[1::2]
            logits = (1 - self.params.cfg_scale) * uncond + self.params.cfg_scale * cond
            output = output.index_select(0, order)
            probs = [p.index_select(0, order) for p in probs]
        attention = [{"cross_attn_probabilities": [p, None]} for p in probs]
        self._after_decoder(list(self.items), logits, output, attention)

    def _after_decoder(self, items: list[_Item], logits, output, attention) -> None:
        """NeMo's per-step work after the decoder, for ``items`` whose rows these outputs are
        (CFG: ``output`` and ``attention`` conditional rows first, then unconditional)."""
        model, params = self.model, self.params
        count = len(items)
        width = attention[0]["cross_attn_probabilities"][0].shape[-1]
        scores, _ = model.get_cross_attention_scores(attention,
                                                     filter_layers=params.estimate_alignment_from_layers)
        text_lens = torch.tensor([item.text_len for item in items])
        counters = [item.counter for item in items]
        attended, counters = model.get_most_attended_text_timestep(
            alignment_attention_scores=scores, last_attended_timesteps=[[i.last_attended for i in items]],
            text_lens=text_lens, lookahead_window_size=params.attention_prior_lookahead_window,
            attended_timestep_counter=counters, batch_size=count, left_offset=[0] * count)
        unfinished = {k: item.unfinished for k, item in enumerate(items)}
        finished = {k: item.finished_count for k, item in enumerate(items) if item.finished_count is not None}
        prior, unfinished, finished = model.construct_inference_prior(
            prior_epsilon=params.attention_prior_epsilon, cross_attention_scores=scores, text_lens=text_lens,
            text_time_step_attended=attended, attended_timestep_counter=counters, unfinished_texts=unfinished,
            finished_texts_counter=finished, end_indices={},
            lookahead_window_size=params.attention_prior_lookahead_window, batch_size=count)
        if params.ignore_finished_sentence_tracking:
            finished_items, unfinished_items = {}, {}
        else:
            threshold = model.chunked_inference_config.finished_limit_first_chunk
            finished_items = {k: v for k, v in finished.items() if v >= threshold}
            unfinished_items = {k: v for k, v in unfinished.items() if v}
        codes, argmax = self._sample(items, logits, output, unfinished_items, finished_items)
        self._store_prior(items, prior[:, 0, :width] if prior is not None else None)
        ended = []
        ends = end_frames(model, codes, argmax, self.eos_method)
        for k, item in enumerate(items):
            item.last_attended, item.counter = attended[k], counters[k]
            item.unfinished, item.finished_count = unfinished.get(k, False), finished.get(k)
            item.codes = codes[k]
            end = ends[k]
            valid = model.frame_stacking_factor if end == float("inf") else int(end)
            item.step += 1
            if not item.utterance.cancelled() and valid > 0:
                item.utterance.on_frames(codes[k, :, :valid])
            limit = params.max_decoder_steps // model.frame_stacking_factor
            if end != float("inf") or item.step >= limit or item.utterance.cancelled():
                ended.append(item)
        for item in ended:
            if not item.utterance.cancelled():
                item.utterance.on_end()
            self._remove(item)

    def _sample(self, items, logits, output, unfinished_items, finished_items):
        """Local-transformer codes and the argmax codes for the end check, as NeMo draws them; items
        still inside their first frames (end of speech forbidden) are drawn apart from the others."""
        model, params = self.model, self.params
        forbid = [item.step * model.frame_stacking_factor < params.min_generated_frames for item in items]
        groups = [[k for k, f in enumerate(forbid) if f == flag] for flag in (True, False)]
        groups = [g for g in groups if g]
        codes = [None] * len(items)
        argmax = [None] * len(items)
        half = len(items)
        for group in groups:
            index = torch.tensor(group, device=output.device)
            rows = torch.cat([index, index + half]) if self.cfg else index
            whole = len(group) == len(items)
            lt = model._lt_helper.sample_autoregressive(
                dec_output=output if whole else output.index_select(0, rows),
                temperature=params.temperature, topk=params.topk,
                unfinished_items=unfinished_items if whole else {},
                finished_items=finished_items if whole else {},
                use_cfg=self.cfg, cfg_scale=params.cfg_scale, use_kv_cache=params.use_LT_kv_cache,
                forbid_audio_eos=forbid[group[0]])
            top = model.sample_codes_from_logits(
                logits if whole else logits.index_select(0, index),
                temperature=model.chunked_inference_config.argmax_temperature, topk=1,
                unfinished_items=unfinished_items if whole else {},
                finished_items=finished_items if whole else {}, forbid_audio_eos=forbid[group[0]])
            for position, k in enumerate(group):
                codes[k], argmax[k] = lt[position], top[position]
        return torch.stack(codes), torch.stack(argmax)

    def _store_prior(self, items: list[_Item], prior) -> None:
        if prior is None:
            return
        rows = [self.items.index(item) * self.rows_per_item for item in items]
        if self.cfg:
            rows += [row + 1 for row in rows]
        index = torch.tensor(rows, device=self.static.device)
        prior = prior.to(self.static.device, self.static.dtype)
        for layer, on in enumerate(self.prior_layers):
            if on:
                self.static.prior[layer].index_fill_(0, index, 1.0)
                self.static.prior[layer, :, : prior.shape[-1]].index_copy_(0, index, prior[: len(rows)])

    def _remove(self, item: _Item) -> None:
        position = self.items.index(item)
        last = len(self.items) - 1
        if position != last:
            per = self.rows_per_item
            self.static.move(list(range(last * per, last * per + per)),
                             list(range(position * per, position * per + per)))
            self.items[position] = self.items[last]
        self.items.pop()
