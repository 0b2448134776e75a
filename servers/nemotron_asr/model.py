"""The streaming model: a NeMo cache-aware RNN-T prepared for batched steps on one device."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger
from nemotron_common.devices import index_tensor, memory_note, pick_device

from .decoder import DecoderPool
from .featurizer import Featurizer
from .steps import CachePool, EagerStep, GraphStep, StepKind, most_new_frames, pool_layers, step_kinds

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download at service start

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Batch sizes with a captured graph; a batch replays the smallest that holds it. Above 64 a graph
# step costs about 0.05 ms more per stream (H200, real shape), so the steps there stay fine enough
# that padding wastes at most a few milliseconds.
GRAPH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 320, 384, 448, 512)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return DTYPES[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def restore(path: Path, device: torch.device):
    from nemo.collections.asr.models import ASRModel
    from nemotron_common import nemo_fixes
    from nemotron_common.logs import adopt

    adopt("nemo_logger")
    nemo_fixes.apply()
    model = ASRModel.restore_from(str(path), map_location=device)
    nemo_fixes.collect_restore_leftovers()
    return model.eval()


@dataclass
class StepOutput:
    encoded: torch.Tensor  # (B, D, T) float32
    encoded_len: torch.Tensor
    slots: torch.Tensor  # the streams' slots, on the device


class StreamingModel:
    """Everything the engine needs to run one batched streaming step of any kind."""

    def __init__(self, path: Path, right_context: int, device: str = "auto", dtype: str = "auto",
                 max_streams: int = 64, cuda_graphs: bool = True,
                 graph_buckets: tuple[int, ...] = GRAPH_BUCKETS) -> None:
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = restore(path, self.device)
        from nemo.collections.asr.models import EncDecRNNTModel
        from nemo.collections.asr.parts.mixins.streaming import StreamingEncoder

        streaming = isinstance(self.model, EncDecRNNTModel) and isinstance(
            self.model.encoder, StreamingEncoder)
        if not streaming:
            raise ValueError(f"{path} is not a cache-aware streaming RNN-T model")
        encoder = self.model.encoder
        contexts = [list(c) for c in (encoder.att_context_size_all or [encoder.att_context_size])]
        if right_context not in {c[1] for c in contexts}:
            choices = sorted({c[1] for c in contexts})
            raise ValueError(f"right_context {right_context} is not supported by this model "
                             f"(it supports {choices})")
        left = next(c[0] for c in contexts if c[1] == right_context)
        encoder.set_default_att_context_size([left, right_context])
        from . import encoder_layers

        logger.debug(f"{encoder_layers.apply(encoder)} encoder layers switched to streaming layouts")
        logger.debug(f"{pool_layers(encoder)} conformer layers read and write pooled caches")
        encoder.to(self.dtype)
        self.encoder = encoder
        self.right_context = right_context
        self.cfg = encoder.streaming_cfg
        self.featurizer = Featurizer(self.model.preprocessor, self.device)
        self.kinds: dict[str, StepKind] = step_kinds(self.cfg, self.featurizer.lead)
        self.shift = self.cfg.shift_size[1]
        self.pre = self.cfg.pre_encode_cache_size[1]
        self.first_frames = self.cfg.chunk_size[0]
        self.chunk_ms = self.shift * self.featurizer.hop * 1000 // self.featurizer.sample_rate
        logger.info(f"weights on {self.device}{memory_note(self.device)}")
        new_frames = most_new_frames(self.kinds, encoder.subsampling_factor)
        self.pool = CachePool(encoder, max_streams, self.dtype, self.device, new_frames)
        logger.info(f"encoder caches for {max_streams} streams{memory_note(self.device)}")
        self.uses_graphs = cuda_graphs and self.device.type == "cuda"
        buckets = sorted({b for b in graph_buckets if b < max_streams} | {max_streams})
        self.buckets = buckets
        self.steps: dict[str, EagerStep | GraphStep] = {}
        self.decoder = DecoderPool(self.model, max_streams, self.device, new_frames)
        logger.info(f"decoder states for {max_streams} streams{memory_note(self.device)}")

    def capture(self, progress=None) -> None:
        """Build the per-kind step runners (captures CUDA graphs; seconds per kind on a GPU).

        Every graph shares one memory pool, and memory freed in it is reused only by a request that
        fits a freed block: captured smallest first, each larger bucket took new blocks and the
        pool grew to the sum of all buckets' scratch. Largest first, the smaller graphs fit in the
        largest one's (bench/results/memory-h200-run4.md)."""
        with torch.inference_mode():
            if not self.uses_graphs:
                self.steps = {kind.name: EagerStep(self.encoder, kind, self.pool)
                              for kind in self.kinds.values()}
                return
            steps = {kind.name: GraphStep(self.encoder, kind, self.pool, self.dtype)
                     for kind in self.kinds.values()}
            for size in sorted(self.buckets, reverse=True):
                if progress:
                    progress(f"capturing CUDA graphs of every step kind at batch size {size}", 300)
                for step in steps.values():
                    step.add(size)
            self.steps = steps
            logger.info(f"captured {', '.join(steps)} steps for batch sizes {self.buckets}"
                        f"{memory_note(self.device)}")

    def encode(self, kind: str, features: torch.Tensor, lengths: torch.Tensor,
               slots: list[int]) -> StepOutput:
        """Run one step for the streams in ``slots`` and keep their new caches."""
        index = index_tensor(slots, self.device)
        encoded, encoded_len = self.steps[kind](features.to(self.dtype), lengths, index)
        return StepOutput(encoded.float(), encoded_len, index)

    def decode(self, output: StepOutput) -> list[list[int]]:
        """Greedy decoding of one chunk per stream; returns the tokens each stream emitted."""
        return self.decoder.step(output.encoded, output.encoded_len, output.slots)

    def reset_streams(self, slots: list[int]) -> None:
        """Fresh encoder caches and decoder state for new utterances in ``slots``."""
        self.pool.reset(slots)
        self.decoder.reset(slots)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def transcribe_offline(self, audio) -> str:
        """Whole-utterance transcription with the same context setting (the reference for tests)."""
        with torch.inference_mode():
            signal = torch.as_tensor(audio, dtype=torch.float32, device=self.device)[None]
            length = torch.tensor([signal.shape[1]], device=self.device)
            mel, mel_len = self.model.preprocessor(input_signal=signal, length=length)
            encoded, encoded_len = self.encoder(audio_signal=mel.to(self.dtype), length=mel_len)
            hyps = self.model.decoding.rnnt_decoder_predictions_tensor(
                encoder_output=encoded.float(), encoded_lengths=encoded_len, return_hypotheses=True)
        return hyps[0].text.strip()

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        mode = "CUDA graphs" if self.uses_graphs else "eager"
        return (f"{name}, {str(self.dtype).removeprefix('torch.')}, {self.chunk_ms} ms chunks "
                f"(right context {self.right_context}), {mode}")


def log_device() -> None:
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        name = torch.cuda.get_device_name()
        logger.info(f"CUDA device {name} (sm_{major}{minor}), torch {torch.__version__}")
    else:
        logger.info(f"no CUDA device; running on CPU, torch {torch.__version__}")
