"""Magpie TTS through NeMo's own generation loop, with every decoded frame observed as it is made.

``MagpieTTSModel.generate_speech`` is the loop behind NeMo's ``do_tts`` (baked voices, sentence
chunking of long text). It returns codes only at the end, so :meth:`SpeechModel.generate` watches
the per-step end-of-speech check, the one call the loop makes with each new frame: new frames go to
the caller at once (streaming) and the loop stops at the next step once nobody wants its output
(cancel). The codes are NeMo's, unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from nemotron_common.devices import pick_device

from . import eos
from .codec import StreamDecoder, WindowedCodec, receptive_field
from .text import split_long

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Longest text of one chunk, in characters. NeMo's threshold counts words, so a run without spaces
# (a URL, a long number) passes it whole: as a character tokenizer's tokens, this fits the static
# decoder's text memory at its first size (256), and is about 17 s of English speech.
MAX_CHUNK_CHARS = 250


class Stopped(Exception):
    """Raised inside NeMo's loop when every utterance of the batch was cancelled."""


@dataclass
class Utterance:
    chunks: list[torch.Tensor]  # token ids per sentence chunk, each ending in EOS
    speaker: int
    on_frames: Callable[[torch.Tensor], None]  # (codebooks, n) frames, as soon as they exist
    cancelled: Callable[[], bool] = lambda: False
    on_end: Callable[[], None] = lambda: None  # its last frame is out, though the batch goes on


def share_causal_masks(model: torch.nn.Module) -> int:
    """Give every causal self-attention layer of ``model`` one shared boolean mask; returns the bytes
    freed.

    NeMo registers a float lower triangle for the longest sequence (4096 x 4096, 64 MiB) in each
    causal self-attention layer: 768 MiB for Magpie's 12 decoder layers, all holding the same
    values. NeMo only compares the mask with 0, which a boolean mask answers the same way."""
    shared: dict[tuple, torch.Tensor] = {}
    freed = 0
    for module in list(model.modules()):
        mask = getattr(module, "causal_mask", None)
        if not isinstance(mask, torch.Tensor) or mask.dim() < 2:
            continue
        key = (tuple(mask.shape), mask.device)
        lower = shared.get(key)
        if lower is None:
            size = mask.shape[-2:]
            lower = torch.ones(size, dtype=torch.bool, device=mask.device).tril().view(mask.shape)
        if not torch.equal(mask != 0, lower):
            continue  # not the usual lower triangle: keep it
        if key not in shared:
            shared[key] = lower
            freed -= lower.numel() * lower.element_size()
        freed += mask.numel() * mask.element_size()
        module.causal_mask = lower  # a registered buffer is replaced in place
    return freed


def cache_type(name: str, device: torch.device) -> torch.dtype | None:
    """The static decoder's key and value type for the ``kv_cache_dtype`` setting (None: the model's).
    float16 by default on CUDA: it halves the caches, which are most of a large batch's memory, and
    first audio measured no later with it (bench/results/memory-h200-run10.md); a CPU computes
    float16 products slower than float32 ones."""
    if name == "auto":
        name = "float16" if device.type == "cuda" else "model"
    return None if name == "model" else getattr(torch, name)


class SpeechModel:
    def __init__(self, path: Path, device: str = "auto", use_cfg: bool = True, kv_cache: bool = True,
                 max_frames: int = 0, codec: Path | None = None, cuda_graphs: bool = True,
                 max_batch: int = 16, static_decoder: bool = True, carried_codec: bool = True,
                 prefill_rows: int = 64, kv_cache_dtype: str = "auto", tf32: bool = True) -> None:
        from nemo.collections.tts.models import MagpieTTSModel
        from nemotron_common import nemo_fixes
        from nemotron_common.logs import adopt

        adopt("nemo_logger")  # NeMo logs every 30th decoder step and each end of speech at INFO
        nemo_fixes.apply()
        self.device = pick_device(device)
        if self.device.type == "cuda":
            # Magpie runs in float32: without TF32 every product of its decoder (the prompt pass above
            # all, proportional to the batch) runs on the GPU's slow float32 path. Set before any
            # graph is captured, since a graph keeps the kernels chosen then. cuDNN's convolutions
            # (the codec) use TF32 by PyTorch's default already.
            torch.backends.cuda.matmul.allow_tf32 = tf32
        override = None
        if codec is not None:
            override = MagpieTTSModel.restore_from(str(path), return_config=True)
            override.codecmodel_path = str(codec)
        self.model = MagpieTTSModel.restore_from(str(path), map_location=self.device,
                                                 override_config_path=override).eval()
        nemo_fixes.collect_restore_leftovers()
        logger.debug(f"causal masks shared: {share_causal_masks(self.model) / 2**20:.0f} MiB freed")
        if not self.model.has_baked_context_embedding:
            raise ValueError(f"{path.name} has no baked voices; a Magpie checkpoint with baked speakers "
                             "is needed")
        if max_frames:
            self.model.inference_parameters.max_decoder_steps = max_frames
        self.use_cfg = use_cfg
        self.rows_per_utterance = 2 if use_cfg else 1  # decoder rows: CFG adds an unconditional one
        self.kv_cache = kv_cache
        from . import prior

        prior.install(self.model)
        self.sampler = self.code_sampler = None
        if cuda_graphs and self.device.type == "cuda":
            from .code_sampler import CodeSampler
            from .local_sampler import LocalSampler

            self.sampler = LocalSampler(self.model._lt_helper, graphs=True)
            self.sampler.install()
            self.code_sampler = CodeSampler(self.model, graphs=True)
            self.code_sampler.install()
        self.static = (self._static_decoder(max_batch, cuda_graphs, prefill_rows, kv_cache_dtype)
                       if static_decoder and kv_cache else None)
        self.sample_rate = int(self.model.output_sample_rate)
        self.samples_per_frame = int(self.model.codec_model_samples_per_frame)
        self.speakers = int(self.model.num_baked_speakers)
        self.languages = self._languages()
        self.codec = self._stream_codec(max_batch, carried_codec, cuda_graphs)
        logger.info(f"streamed codec: {self.codec.describe()}")

    def _static_decoder(self, max_batch: int, graphs: bool, prefill_rows: int, cache_dtype: str):
        from .decoder_step import StaticDecoder, supported

        if reason := supported(self.model):
            logger.warning(f"decoder steps run through NeMo's cache: {reason}")
            return None
        context = int(self.model._baked_embedding_T.item())
        positions = context + self.model.inference_parameters.max_decoder_steps + 2
        rows = max_batch * self.rows_per_utterance
        return StaticDecoder(self.model, rows, positions, graphs=graphs, prefill_rows=prefill_rows,
                             cache_dtype=cache_type(cache_dtype, self.device))

    def _stream_codec(self, max_batch: int, carried: bool, graphs: bool):
        from .codec_states import CarriedStateCodec, unsupported

        helper = self.model._codec_helper
        if carried and not (reason := unsupported(helper.codec_model)):
            return CarriedStateCodec(helper, self.samples_per_frame, self.device, slots=max_batch,
                                     graphs=graphs)
        if carried:
            logger.info(f"codec states cannot be carried between chunks: {reason}")
        context = receptive_field(self.decode, self.model.num_audio_codebooks, self.model.codebook_size,
                                  self.device)
        return WindowedCodec(self.decode, context, self.samples_per_frame)

    def _languages(self) -> dict[str, str]:
        """Language code -> tokenizer name, for every language this checkpoint can speak."""
        from nemo.collections.tts.parts.utils.tts_dataset_utils import LANGUAGE_TOKENIZER_MAP

        names = list(self.model.tokenizer.tokenizers)
        found = {}
        for language, candidates in LANGUAGE_TOKENIZER_MAP.items():
            for candidate in candidates:
                if candidate in names:
                    found[language] = candidate
                    break
        return found

    def capture(self, max_batch: int) -> int:
        """Capture the per-frame sampling and the streamed codec calls for every batch bucket;
        returns the graph count."""
        if self.sampler is None:
            return 0
        params = self.model.inference_parameters
        argmax_temperature = self.model.chunked_inference_config.argmax_temperature
        rows = max_batch * self.rows_per_utterance
        return (self.sampler.capture_all(max_batch, self.model.cfg.decoder.d_model, params.temperature,
                                         params.topk, self.use_cfg, params.cfg_scale)
                + self.code_sampler.capture_all(max_batch, argmax_temperature, 1)
                + (self.static.capture_all(rows) if self.static else 0)
                + self.codec.capture_all(max_batch))

    def describe(self) -> str:
        if self.device.type == "cuda":
            return f"{torch.cuda.get_device_name(self.device)} (cuda)"
        return "cpu"

    def tokenize(self, text: str, language: str) -> list[torch.Tensor]:
        """NeMo's chunks of ``text`` (one, or a sentence each for a long text), with any sentence
        longer than NeMo's own threshold for splitting (about 20 s of speech) cut into pieces under it:
        NeMo would speak such a sentence only up to the frame limit and drop the rest."""
        from nemo.collections.tts.parts.utils.tts_dataset_utils import (
            DEFAULT_LANGUAGE_THRESHOLDS,
            chunk_text_for_inference,
        )

        def nemo(text: str) -> tuple[list[torch.Tensor], list[str]]:
            chunks, _, texts = chunk_text_for_inference(
                text=text, language=language, tokenizer_name=self.languages[language],
                text_tokenizer=self.model.tokenizer, eos_token_id=self.model.eos_id)
            return [chunk.long() for chunk in chunks], texts

        def fits(piece: str) -> bool:
            return (len(piece) <= MAX_CHUNK_CHARS
                    and not DEFAULT_LANGUAGE_THRESHOLDS.exceeds_threshold(piece, language))

        pieces = []
        for chunk, sentence in zip(*nemo(text), strict=True):
            if fits(sentence):
                pieces.append(chunk)
            else:  # each piece fits, so NeMo tokenizes it as one chunk
                pieces += [tokens for piece in split_long(sentence, fits) for tokens in nemo(piece)[0]]
        return pieces

    @torch.inference_mode()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, codebooks, frames) codes -> (B, samples) float audio."""
        lens = torch.full((codes.shape[0],), codes.shape[-1], dtype=torch.long, device=self.device)
        audio, _, _ = self.model._codec_helper.codes_to_audio(codes.to(self.device), lens)
        return audio.float()

    def stream_decoder(self) -> StreamDecoder:
        return self.codec.stream()

    def generate(self, utterances: list[Utterance], on_step: Callable[[], None] | None = None) -> None:
        """Generate all utterances as one batch; frames reach each ``on_frames`` as they are made,
        and ``on_step`` runs once after each decoder step's frames are handed out.

        Utterances of several sentence chunks are generated alone (NeMo carries chunk history per
        batch); the engine batches only single-chunk ones.
        """
        for _ in self.generate_chunks(utterances, on_step):
            pass

    @torch.inference_mode()
    def generate_chunks(self, utterances: list[Utterance],
                        on_step: Callable[[], None] | None = None) -> Iterator[int]:
        """``generate``, a sentence chunk per ``next``: yields how many chunks are still to come. NeMo's
        history from chunk to chunk stays in this generator, so other batches may run in between."""
        chunk_count = max(len(u.chunks) for u in utterances)
        if chunk_count > 1 and len(utterances) > 1:
            raise ValueError("multi-chunk utterances are generated one at a time")
        state = self.model.create_chunk_state(batch_size=len(utterances))
        for index in range(chunk_count):
            tokens = [u.chunks[index] for u in utterances]
            batch = {
                "text": torch.nn.utils.rnn.pad_sequence(tokens, batch_first=True).to(self.device),
                "text_lens": torch.tensor([len(t) for t in tokens], dtype=torch.long, device=self.device),
                "speaker_indices": [u.speaker for u in utterances],
            }
            # generate_speech neither starts nor clears the decoder's KV cache: a cache left on
            # would poison NeMo's next call, so it is switched on here and off again below.
            self.model.decoder.reset_cache(use_cache=self.kv_cache)
            try:
                with self._observe(utterances, on_step, index == chunk_count - 1), self._static_steps():
                    self.model.generate_speech(batch, chunk_state=state,
                                               end_of_text=[index == chunk_count - 1] * len(tokens),
                                               beginning_of_text=index == 0, use_cfg=self.use_cfg,
                                               use_local_transformer_for_inference=True)
            finally:
                self.model.decoder.reset_cache(use_cache=False)
            yield chunk_count - index - 1

    @contextmanager
    def _static_steps(self):
        if self.static is None:
            yield
        else:
            with self.static.installed():
                yield

    @contextmanager
    def _observe(self, utterances: list[Utterance], on_step: Callable[[], None] | None, last_chunk: bool):
        model = self.model
        check = eos.check_eos_and_update_state
        stacking = model.frame_stacking_factor
        ended: set[int] = set()

        def observed(chunk_state, codes, argmax, chunk_end, chunk_end_frame_lens, *rest):
            step = rest[-2]
            check(model, chunk_state, codes, argmax, chunk_end, chunk_end_frame_lens, *rest)
            wanted = False
            for i, utterance in enumerate(utterances):
                if i in ended or utterance.cancelled():
                    continue
                valid = stacking
                if i in chunk_end_frame_lens:
                    valid = chunk_end_frame_lens[i] - step * stacking
                    ended.add(i)
                else:
                    wanted = True
                if valid > 0:
                    utterance.on_frames(codes[i, :, :valid])
                if last_chunk and i in ended:
                    utterance.on_end()
            if on_step is not None:
                on_step()
            if not wanted:
                # Every utterance has ended or been cancelled: NeMo would go on to its own end check.
                if len(ended) < len(utterances):
                    raise Stopped

        model._check_eos_and_update_state = observed
        try:
            yield
        except Stopped:
            pass
        finally:
            del model._check_eos_and_update_state
