"""Greedy RNN-T decoding with every stream's decoder state kept batched, one slot per stream.

NeMo's hypothesis-based streaming API splits the batched decoder state into one object per stream
after each step and merges them back before the next (Python work per stream per step). Here the
state lives in one ``BatchedLabelLoopingState`` indexed by slot, like the encoder caches: a step
gathers its streams' rows, runs NeMo's label-looping decoder (CUDA-graph captured by NeMo on GPU),
and scatters the new rows back. Only the tokens emitted in the step come back to the CPU.
"""

from __future__ import annotations

import torch
from nemotron_common.devices import index_tensor


def _select(value, index: torch.Tensor, dim: int):
    if isinstance(value, (tuple, list)):
        return type(value)(_select(v, index, dim) for v in value)
    return value.index_select(dim, index)


def _copy_into(target, index: torch.Tensor, source, dim: int) -> None:
    """Copy rows into ``target`` at ``index``; ``source`` may hold more rows (NeMo's CUDA-graph
    decoder returns its state at the captured batch size), of which the first ones are ours."""
    if isinstance(target, (tuple, list)):
        for t, s in zip(target, source, strict=True):
            _copy_into(t, index, s, dim)
    else:
        target.index_copy_(dim, index, source.narrow(dim, 0, index.numel()).to(target.dtype))


def _rows(state, index: torch.Tensor):
    """The rows ``index`` of a batched decoding state, as a state of their own."""
    return type(state)(predictor_states=_select(state.predictor_states, index, 1),
                       predictor_outputs=state.predictor_outputs.index_select(0, index),
                       labels=state.labels.index_select(0, index),
                       decoded_lengths=state.decoded_lengths.index_select(0, index),
                       fusion_states_list=[f.index_select(0, index) for f in state.fusion_states_list],
                       time_jumps=None)


class DecoderPool:
    def __init__(self, model, slots: int, device: torch.device, chunk_frames: int) -> None:
        greedy = model.decoding.decoding
        self.computer = getattr(greedy, "decoding_computer", None)
        if self.computer is None or not hasattr(self.computer, "reset_state_by_mask"):
            raise ValueError("streaming needs NeMo's label-looping greedy decoder "
                             "(decoding strategy greedy_batch with loop_labels)")
        # NeMo sizes its CUDA-graph decoding state for at least 375 encoder frames a row (30 s of
        # audio), the projected encoder output in float32 among it: 996 MiB at 1,024 rows for the
        # real shape. A streaming step decodes one chunk, ``chunk_frames`` at most, so the state is
        # sized for that (13 MiB); a longer input would only make NeMo size it again.
        self.computer.INITIAL_MAX_TIME = chunk_frames
        self.decoding = model.decoding
        self.device = device
        # Every slot's fresh state: the prediction network after <SOS>, computed once as NeMo's own
        # reset computes it on the engine thread, for the whole batch and without autograd. The rows
        # of one batched product may differ in the last bit (a CPU's matrix kernels treat some rows
        # apart), so each slot is reset from its own row.
        with torch.inference_mode():
            self.fresh = self.computer._get_batched_decoding_state_after_sos(device=device, batch_size=slots)
        # The slots' working state starts as a copy of it (made outside inference mode, so that it
        # stays writable wherever the engine is driven from).
        self.state = _rows(self.fresh, torch.arange(slots, device=device))

    def reset(self, slots: list[int]) -> None:
        """Fresh decoder state for new utterances in ``slots``.

        NeMo's ``reset_state_by_mask`` runs the prediction network over every slot for each reset
        and selects by mask; copying the slots' fresh rows is the same state, in a few copies that
        never wait for the GPU (the engine resets streams while the next step runs).
        """
        index = index_tensor(slots, self.device)
        self._store(index, _rows(self.fresh, index))

    def _store(self, index: torch.Tensor, source) -> None:
        """Write a state's first rows into the slots ``index``."""
        state = self.state
        _copy_into(state.predictor_states, index, source.predictor_states, 1)
        _copy_into(state.predictor_outputs, index, source.predictor_outputs, 0)
        _copy_into(state.labels, index, source.labels, 0)
        _copy_into(state.decoded_lengths, index, source.decoded_lengths, 0)
        _copy_into(state.fusion_states_list, index, source.fusion_states_list, 0)

    def step(self, encoded: torch.Tensor, encoded_len: torch.Tensor, index: torch.Tensor) -> list[list[int]]:
        """Decode one chunk for the streams in slots ``index``; returns the tokens each one emitted."""
        streams = index.numel()
        with torch.inference_mode():
            hyps, new_state = self.computer(x=encoded.transpose(1, 2), out_len=encoded_len,
                                            prev_batched_state=_rows(self.state, index))
            self._store(index, new_state)
            lengths, transcript, *_ = hyps.get_data_without_blank()
            lengths = lengths[:streams].cpu().tolist()
            # NeMo's hypotheses are allocated far wider than one chunk's tokens: copy only those
            # (H200, 512 streams: two full copies took 11 ms of a 70 ms step).
            rows = transcript[:streams, : max(lengths, default=0)].cpu().tolist()
        return [row[:length] for row, length in zip(rows, lengths, strict=True)]

    def new_text(self) -> UtteranceText:
        return UtteranceText(self.decoding)


class UtteranceText:
    """An utterance's text as its tokens arrive: the text NeMo's hypothesis decoding makes of all of
    them (``decode_tokens_to_str_with_strip_punctuation``, stripped).

    NeMo maps token ids to pieces one by one in Python, so decoding the whole utterance again at
    every step costs more as it grows (50 us at 60 tokens on a CI core, for each of hundreds of
    streams per step). Each id's piece does not depend on its neighbours, so only new ids are mapped
    here; joining the pieces and NeMo's punctuation and language-tag clean-up run on the whole text.
    """

    def __init__(self, decoding) -> None:
        from nemo.collections.common.tokenizers.aggregate_tokenizer import AggregateTokenizer

        self.decoding = decoding
        self.tokens: list[int] = []  # kept for a tokenizer that decodes ids as a whole
        self.pieces: list[str] = []
        # an aggregate (multilingual) tokenizer decodes ids as a whole
        self._whole = isinstance(getattr(decoding, "tokenizer", None), AggregateTokenizer)

    def add(self, tokens: list[int]) -> str:
        """Append ``tokens``; the utterance's whole text."""
        decoding = self.decoding
        if self._whole:
            self.tokens.extend(tokens)
            return decoding.decode_tokens_to_str_with_strip_punctuation(self.tokens).strip()
        self.pieces.extend(decoding.decode_ids_to_tokens(tokens))
        text = decoding.decode_tokens_to_str(self.pieces)
        if decoding.supported_punctuation:  # as decode_tokens_to_str_with_strip_punctuation does
            text = decoding.space_before_punct_pattern.sub(r"\2", text)
        if decoding.strip_lang_tags:
            text = decoding.lang_tag_pattern.sub("", text).strip()
        return text.strip()
