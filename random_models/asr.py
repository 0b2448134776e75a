"""Build a randomly initialised cache-aware FastConformer RNN-T and save it as a real ``.nemo``.

No weights can be downloaded in CI or on the benchmark GPU, so tests and benchmarks make their own
model of a chosen shape: ``tiny`` for CPU tests, ``real`` for the shape of
nvidia/nemotron-speech-streaming-en-0.6b (24 layers, d_model 1024, 128 mels, 8x causal subsampling,
2-layer LSTM predictor 640, 1024 tokens). The blank logit is biased so greedy decoding emits a few
tokens per second instead of nothing or garbage. Loading goes through ``restore_from`` like any model.

    python -m random_models.asr OUT.nemo --shape tiny
"""

from __future__ import annotations

import os
import random
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass(frozen=True)
class Shape:
    d_model: int
    layers: int
    heads: int
    mels: int
    vocab: int
    pred_hidden: int
    subsampling_channels: int


SHAPES = {
    "tiny": Shape(d_model=64, layers=2, heads=4, mels=80, vocab=64, pred_hidden=64, subsampling_channels=32),
    "real": Shape(d_model=1024, layers=24, heads=8, mels=128, vocab=1024, pred_hidden=640,
                  subsampling_channels=256),
}


def _train_tokenizer(directory: Path, vocab: int, seed: int) -> None:
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    rng = random.Random(seed)
    text = directory / "text.txt"
    lines = max(300, vocab * 20)
    with text.open("w") as f:
        for _ in range(lines):
            words = ("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
                     for _ in range(rng.randint(4, 14)))
            f.write(" ".join(words) + "\n")
    create_spt_model(str(text), vocab_size=vocab, sample_size=-1, do_lower_case=True,
                     tokenizer_type="bpe", output_dir=str(directory))


def model_config(shape: Shape, tokenizer_dir: Path) -> dict:
    dataset = {"manifest_filepath": None, "sample_rate": 16000, "batch_size": 1, "shuffle": False}
    return {
        "sample_rate": 16000, "compute_eval_loss": False, "log_prediction": False,
        "model_defaults": {"enc_hidden": shape.d_model, "pred_hidden": shape.pred_hidden,
                           "joint_hidden": shape.pred_hidden},
        "tokenizer": {"dir": str(tokenizer_dir), "type": "bpe"},
        "train_ds": dataset,
        "validation_ds": {**dataset, "use_start_end_token": False},
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": 16000, "normalize": "NA", "window_size": 0.025,
                         "window_stride": 0.01, "window": "hann", "features": shape.mels, "n_fft": 512,
                         "frame_splicing": 1, "dither": 0.0, "pad_to": 0},
        "spec_augment": None,
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": shape.mels,
                    "feat_out": -1, "n_layers": shape.layers, "d_model": shape.d_model,
                    "subsampling": "dw_striding", "subsampling_factor": 8,
                    "subsampling_conv_channels": shape.subsampling_channels, "causal_downsampling": True,
                    "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": shape.heads,
                    "att_context_size": [[70, 13], [70, 6], [70, 1], [70, 0]],
                    "att_context_style": "chunked_limited", "xscaling": True, "pos_emb_max_len": 5000,
                    "conv_kernel_size": 9, "conv_norm_type": "layer_norm", "conv_context_size": "causal",
                    "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0, "dropout_att": 0.0},
        "decoder": {"_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
                    "random_state_sampling": False, "blank_as_pad": True,
                    "prednet": {"pred_hidden": shape.pred_hidden, "pred_rnn_layers": 2, "t_max": None,
                                "dropout": 0.0}},
        "joint": {"_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None,
                  "preserve_memory": False, "fuse_loss_wer": False, "fused_batch_size": 4,
                  "jointnet": {"joint_hidden": shape.pred_hidden, "activation": "relu", "dropout": 0.0}},
        "decoding": {"strategy": "greedy_batch", "greedy": {"max_symbols": 10}},
        "loss": {"loss_name": "default"}, "optim": None,
    }


def speechlike_audio(seconds: float, seed: int) -> np.ndarray:
    """Float audio in [-1, 1] with speech-like structure: gliding harmonics, syllable envelope, noise."""

    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    pitch = 110 + 60 * rng.random() + 40 * np.sin(2 * np.pi * (0.5 + rng.random()) * t)
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    voice = sum(np.sin(k * phase) / k for k in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * (3 + 2 * rng.random()) * t + rng.random() * 6)
    audio = 0.25 * voice * envelope + 0.02 * rng.standard_normal(len(t))
    return np.clip(audio, -1, 1).astype(np.float32)


def _emission_rate(model, bias: float, features, lengths) -> float:
    """Tokens per encoder frame that greedy decoding emits for a blank bias."""
    import torch

    with torch.no_grad():
        model.joint.joint_net[-1].bias[-1] = bias
        encoded, encoded_len = model.encoder(audio_signal=features, length=lengths)
        hyps = model.decoding.rnnt_decoder_predictions_tensor(encoded, encoded_len, return_hypotheses=True)
    return sum(len(h.y_sequence) for h in hyps) / float(encoded_len.sum())


@dataclass(frozen=True)
class Talk:
    """How a model talks when served: words a second of audio, and interim transcripts per stream."""
    words_per_second: float
    chars_per_second: float
    interims_per_stream: float


def served_finals(streaming, pcms: list[bytes]) -> tuple[list[str], int]:
    """Stream each of ``pcms`` (16-bit PCM) as one stream of one batch through the server's own
    engine and steps (``streaming`` is a loaded ``nemotron_asr.model.StreamingModel``: its right
    context, dtype and CUDA graphs); returns each stream's final, in order ("" for a stream that
    failed), and the interim transcripts sent in all. The model's slots are free again afterwards."""
    import threading
    import time

    from nemotron_asr.engine import Engine

    finals: dict[int, str] = {}
    interims = [0]
    done = threading.Semaphore(0)

    def deliver(result, index: int) -> None:
        if result.kind == "interim":
            interims[0] += 1
        elif result.kind in ("final", "error"):
            finals[index] = result.text if result.kind == "final" else ""
            done.release()

    engine = Engine(streaming, max_batch=len(pcms))
    ids = [engine.open(lambda result, i=i: deliver(result, i)) for i in range(len(pcms))]
    for stream_id, pcm in zip(ids, pcms, strict=True):
        engine.feed(stream_id, pcm)
        engine.finalize(stream_id)
    engine.start()
    try:
        for _ in ids:
            if not done.acquire(timeout=600):
                raise RuntimeError("the engine did not finish its streams")
        for stream_id in ids:  # frees the slots for the next round
            engine.close(stream_id)
        while engine.active_streams:
            time.sleep(0.01)
    finally:
        engine.stop()
    return [finals[i] for i in range(len(pcms))], interims[0]


def served_talk(streaming, audios: list[np.ndarray]) -> Talk:
    """Stream ``audios`` as the server serves them (``served_finals``) and count what comes out."""
    finals, interims = served_finals(streaming, [(np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
                                                 for audio in audios])
    seconds = sum(len(audio) for audio in audios) / 16000
    words = sum(len(text.split()) for text in finals)
    return Talk(words / seconds, sum(len(text) for text in finals) / seconds, interims / len(audios))


# Greedy decoding emits a token where the blank logit loses to the best token's; a random encoder's
# output varies little from frame to frame, so the blank row is amplified to make that margin follow
# the audio (emission then spreads over the utterance instead of bursting in one chunk).
BLANK_GAIN = 10.0
# English speech: about six characters a word, counting the space. Characters, unlike words, grow
# monotonically with the tokens a random model emits, so the bisection counts them.
CHARS_PER_WORD = 6.0
# The first calibration clip's seed; the ASR load generator streams this clip.
CALIBRATION_SEED = 1000
# A random conformer block adds an output as large as its input, so after many blocks (and attention
# that averages dozens of frames) the encoder output hardly follows the audio: the blank margin is
# then nearly the same in every frame, emission all or nothing, and bf16 rounding, which differs with
# the batch shape on a GPU, switched it between silence and a token every frame
# (bench/results/asr-h200-run17-invariance.md). Scaled down, the blocks leave each frame's features
# in the residual stream, and the margin follows the audio by more than rounding moves it. Only the
# weights' values change, so a step runs the same kernels.
BLOCK_GAIN = 0.02


def _let_the_audio_through(model, gain: float = BLOCK_GAIN) -> None:
    import torch

    with torch.no_grad():
        for layer in model.encoder.layers:
            for block_out in (layer.feed_forward1.linear2, layer.feed_forward2.linear2,
                              layer.self_attn.linear_out, layer.conv.pointwise_conv2):
                block_out.weight *= gain
                block_out.bias *= gain


def calibrate_served(path: Path, words_per_second: float, right_context: int, device: str,
                     streams: int = 4, seconds: float = 6.0,
                     seed: int = CALIBRATION_SEED) -> tuple[float, Talk]:
    """The blank bias at which the model at ``path``, served as the server serves it, says about
    ``words_per_second`` (counted in characters), and how it then talks: offline decoding of whole
    utterances does not carry over to streaming in another precision and context."""
    import torch
    from nemotron_asr.model import GRAPH_BUCKETS, StreamingModel

    streaming = StreamingModel(path, right_context, device, max_streams=streams,
                               graph_buckets=tuple(b for b in GRAPH_BUCKETS if b <= streams))
    streaming.capture(lambda *_: None)
    audios = [speechlike_audio(seconds, seed + i) for i in range(streams)]
    bias = streaming.model.joint.joint_net[-1].bias
    start, reach = bias[-1].item(), 20.0 * BLANK_GAIN
    low, high = start - reach, start + reach
    for _ in range(16):
        middle = (low + high) / 2
        with torch.no_grad():
            bias[-1] = middle
        if served_talk(streaming, audios).chars_per_second > CHARS_PER_WORD * words_per_second:
            low = middle
        else:
            high = middle
    with torch.no_grad():
        bias[-1] = (low + high) / 2
    return (low + high) / 2, served_talk(streaming, audios)


def _calibrate_in_child(*args) -> tuple[float, Talk]:
    """:func:`calibrate_served` in a fresh process: loading a .nemo in the process that just wrote
    it fails under some torch releases (``torch.load``'s weights-only check), and CUDA state of the
    build stays out of the measurement."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(calibrate_served, args)


def build(out: Path, shape_name: str = "tiny", seed: int = 0, tokens_per_frame: float = 0.3,
          device: str = "cpu", words_per_second: float = 0.0, right_context: int = 1) -> Path:
    """Write a random-weight cache-aware RNN-T of ``shape_name`` to ``out`` and return its path.

    With ``words_per_second``, the emission rate is calibrated as the model is served (streaming at
    ``right_context`` on ``device``, the server's default precision there); otherwise offline, at
    ``tokens_per_frame`` for whole utterances."""
    import nemo.collections.asr as nemo_asr
    import torch
    from omegaconf import OmegaConf

    shape = SHAPES[shape_name]
    random.seed(seed)
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        _train_tokenizer(Path(tmp), shape.vocab, seed)
        model = nemo_asr.models.EncDecRNNTBPEModel(cfg=OmegaConf.create(model_config(shape, Path(tmp))),
                                                  trainer=None).to(device).eval()
        model.encoder.set_default_att_context_size([70, 13])
        if words_per_second:
            _let_the_audio_through(model)
            with torch.no_grad():
                model.joint.joint_net[-1].weight[-1] *= BLANK_GAIN
        audio = torch.from_numpy(np.stack([speechlike_audio(2.0, seed + i) for i in range(4)])).to(device)
        with torch.no_grad():
            features, lengths = model.preprocessor(input_signal=audio,
                                                   length=torch.full((4,), audio.shape[1], device=device))
        # Bisect the blank bias (the joint's last output) to a realistic emission rate.
        low, high = -5.0, 40.0
        for _ in range(14):
            middle = (low + high) / 2
            if _emission_rate(model, middle, features, lengths) > tokens_per_frame:
                low = middle
            else:
                high = middle
        _emission_rate(model, (low + high) / 2, features, lengths)
        out.parent.mkdir(parents=True, exist_ok=True)
        model.save_to(str(out))
        if words_per_second:
            bias, talk = _calibrate_in_child(out, words_per_second, right_context, device)
            with torch.no_grad():
                model.joint.joint_net[-1].bias[-1] = bias
            print(f"served at right context {right_context} on {device}: {talk.words_per_second:.2f} "
                  f"words/s, {talk.interims_per_stream:.1f} interims per stream", flush=True)
            model.save_to(str(out))
    return out


@click.command()
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="tiny", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--words-per-second", type=float, default=3.5, show_default=True,
              help="calibrate to say this much when served (0: calibrate offline instead)")
@click.option("--right-context", type=int, default=1, show_default=True, help="the served right context")
def main(out: Path, shape: str, seed: int, device: str, words_per_second: float, right_context: int) -> None:
    """Write a random-weight cache-aware FastConformer RNN-T to OUT (.nemo)."""
    click.echo(build(out, shape, seed, device=device, words_per_second=words_per_second,
                     right_context=right_context))


if __name__ == "__main__":
    main()
