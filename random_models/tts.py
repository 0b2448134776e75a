"""Build a randomly initialised Magpie TTS (plus a NanoCodec-shaped codec) and save both as ``.nemo``.

No weights can be downloaded in CI or on the benchmark GPU, so tests and benchmarks make their own
model. It has the released checkpoint's model type (``decoder_ce``) and voice mechanism (baked
context embeddings for five speakers), so the server takes the same path as with the real model.
``tiny`` is for CPU tests; ``real`` has the shape of nvidia/magpie_tts_multilingual_357m (768-d,
6-layer text encoder, 12-layer decoder, autoregressive local transformer, 22.05 kHz, 1024 samples
per frame, 8 codebooks) and a codec decoder the size of NeMo's low-frame-rate 22.05 kHz speech codec
(1024 base channels as in its training config, NeMo's default residual kernels 3/7/11 with dilations
1/3/5), an approximation of the released NanoCodec, since the codec runs in every streamed chunk.
Character tokenizers stand in for the G2P dictionaries, which are not available offline.

    python -m random_models.tts OUT.nemo --shape tiny
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import click

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SAMPLE_RATE = 22050
SAMPLES_PER_FRAME = 1024
VOICES = 5
_CHARS = "nemo.collections.common.tokenizers.text_to_speech.tts_tokenizers"
_CODEC = "nemo.collections.tts.modules.audio_codec_modules"
_LOSSES = "nemo.collections.tts.losses.audio_codec_loss"
TOKENIZERS = {"english": "EnglishCharsTokenizer", "spanish": "SpanishCharsTokenizer",
              "german": "GermanCharsTokenizer", "french": "FrenchCharsTokenizer",
              "italian": "ItalianCharsTokenizer"}


@dataclass(frozen=True)
class Shape:
    d_model: int
    ffn: int
    heads: int
    encoder_layers: int
    decoder_layers: int
    context_layers: int
    local_layers: int
    local_dim: int
    codec_encoder_channels: int
    codec_decoder_channels: int
    codec_kernels: tuple[int, ...]  # the decoder's residual block kernel sizes
    codec_dilations: tuple[int, ...]  # and the dilations in each


SHAPES = {
    "tiny": Shape(d_model=32, ffn=64, heads=2, encoder_layers=1, decoder_layers=2, context_layers=1,
                  local_layers=1, local_dim=32, codec_encoder_channels=4, codec_decoder_channels=64,
                  codec_kernels=(3,), codec_dilations=(1,)),
    "real": Shape(d_model=768, ffn=3072, heads=12, encoder_layers=6, decoder_layers=12, context_layers=3,
                  local_layers=3, local_dim=256, codec_encoder_channels=48, codec_decoder_channels=1024,
                  codec_kernels=(3, 7, 11), codec_dilations=(1, 3, 5)),
}


def _codec_config(shape: Shape) -> dict:
    quantizer_levels = [8, 7, 6, 6]
    groups = 8
    return {
        "sample_rate": SAMPLE_RATE,
        "samples_per_frame": SAMPLES_PER_FRAME,
        "audio_encoder": {"_target_": f"{_CODEC}.HiFiGANEncoder",
                          "encoded_dim": groups * len(quantizer_levels), "down_sample_rates": [2, 2, 4, 8, 8],
                          "base_channels": shape.codec_encoder_channels, "resblock_kernel_sizes": [3],
                          "resblock_dilation_sizes": [1]},
        "vector_quantizer": {"_target_": f"{_CODEC}.GroupFiniteScalarQuantizer",
                             "num_groups": groups, "num_levels_per_group": quantizer_levels},
        "audio_decoder": {"_target_": f"{_CODEC}.CausalHiFiGANDecoder",
                          "input_dim": groups * len(quantizer_levels), "up_sample_rates": [8, 8, 4, 2, 2],
                          "base_channels": shape.codec_decoder_channels,
                          "resblock_kernel_sizes": list(shape.codec_kernels),
                          "resblock_dilation_sizes": list(shape.codec_dilations)},
        "loss_resolutions": [[512, 128, 512]],
        "mel_loss_dims": [64],
        "commit_loss_scale": 0.0,
        "generator_loss": {"_target_": f"{_LOSSES}.GeneratorSquaredLoss"},
        "discriminator_loss": {"_target_": f"{_LOSSES}.DiscriminatorSquaredLoss"},
        "optim": None,
    }


def _magpie_config(shape: Shape, codec_path: Path, max_decoder_steps: int) -> dict:
    d = shape.d_model
    layer = dict(d_ffn=shape.ffn, sa_n_heads=shape.heads, p_dropout=0.0, p_dropout_out=0.0,
                 apply_norm_out=True, max_length_causal_mask=4096, use_learnable_pos_emb=True)
    return {
        "model_type": "decoder_ce",
        "embedding_dim": d,
        "codecmodel_path": str(codec_path),
        "use_kv_cache_for_inference": True,
        "local_transformer_type": "autoregressive",
        "local_transformer_n_layers": shape.local_layers,
        "local_transformer_n_heads": 1,
        "local_transformer_hidden_dim": shape.local_dim,
        "prior_end_step": 0, "prior_scaledown_start_step": 0, "alignment_loss_scale": 0.0,
        "cfg_unconditional_prob": 0.1,
        "inference_parameters": {"max_decoder_steps": max_decoder_steps, "temperature": 0.7, "topk": 80,
                                 "cfg_scale": 2.5},
        "text_tokenizers": {name: {"_target_": f"{_CHARS}.{cls}", "punct": True, "apostrophe": True,
                                   "pad_with_space": False} for name, cls in TOKENIZERS.items()},
        "encoder": dict(n_layers=shape.encoder_layers, d_model=d, kernel_size=3, has_xattn=False,
                        is_causal=False, **layer),
        "context_encoder": dict(n_layers=shape.context_layers, d_model=d, kernel_size=3, has_xattn=False,
                                is_causal=False, **layer),
        "decoder": dict(n_layers=shape.decoder_layers, d_model=d, kernel_size=1, has_xattn=True,
                        xa_d_memory=d, xa_n_heads=1, is_causal=True, apply_norm_to_cond=True, **layer),
        "optim": None,
    }


def _bake_voices(model, seed: int) -> None:
    """Give the model five baked voices, the way the released checkpoint stores them."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    frames, dim = 40, model.cfg.embedding_dim
    weight = torch.randn(VOICES, frames * dim, generator=generator)
    lengths = torch.full((VOICES,), frames, dtype=torch.long)
    model.baked_context_embedding = torch.nn.Embedding(VOICES, frames * dim)
    model.baked_context_embedding.weight.data = weight
    model.baked_context_embedding.weight.requires_grad_(False)
    model._baked_embedding_T = torch.tensor(frames)
    model._baked_embedding_D = torch.tensor(dim)
    model.baked_context_embedding_len = lengths


def _sharpen(model, gain: float = 30.0) -> None:
    """Make the random output heads confident, so the codes depend on text and voice.

    At default init the per-codebook logits are nearly flat and sampling follows the random seed
    alone: every text and voice would give the same codes, and tests could not tell them apart.
    """
    for head in model.local_transformer_out_projections:
        head.weight.data *= gain


def build_codec(path: Path, shape: str = "tiny", seed: int = 0) -> Path:
    import torch
    from nemo.collections.tts.models import AudioCodecModel
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    codec = AudioCodecModel(cfg=OmegaConf.create(_codec_config(SHAPES[shape])), trainer=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec.save_to(str(path))
    return path


def build(path: Path, shape: str = "tiny", seed: int = 0, max_decoder_steps: int = 40) -> Path:
    """Save a random Magpie to ``path`` (its codec next to it) and return ``path``.

    Random weights never emit end-of-speech, so ``max_decoder_steps`` bounds every utterance.
    """
    import torch
    from nemo.collections.tts.models import MagpieTTSModel
    from omegaconf import OmegaConf

    path = Path(path)
    codec_path = build_codec(path.with_name(path.stem + "-codec.nemo"), shape, seed)
    torch.manual_seed(seed)
    model = MagpieTTSModel(cfg=OmegaConf.create(_magpie_config(SHAPES[shape], codec_path, max_decoder_steps)),
                           trainer=None)
    _bake_voices(model, seed)
    _sharpen(model)
    model.save_to(str(path))
    return path


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="tiny", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--max-decoder-steps", default=40, show_default=True,
              help="frames per utterance at most (random weights never emit end-of-speech)")
def main(out: Path, shape: str, seed: int, max_decoder_steps: int) -> None:
    click.echo(build(out, shape, seed, max_decoder_steps))


if __name__ == "__main__":
    main()
