"""Float audio to the wire: peak-limited 16-bit PCM, and WAV files."""

from __future__ import annotations

import io
import wave

import numpy as np
from nemotron_common.resample import resample

KNEE = 0.9  # below this the signal passes unchanged


def limit(audio: np.ndarray) -> np.ndarray:
    """Soft-limit peaks into (-1, 1) instead of clipping them.

    Sample by sample (no gain that depends on the rest of the utterance), so an utterance limited
    chunk by chunk equals the utterance limited whole: streaming needs that at every seam.
    """
    magnitude = np.abs(audio)
    over = magnitude > KNEE
    if over.any():
        audio = audio.copy()
        headroom = 1.0 - KNEE
        audio[over] = np.sign(audio[over]) * (KNEE + headroom * np.tanh((magnitude[over] - KNEE) / headroom))
    return audio


def to_pcm16(audio) -> bytes:
    """A float numpy array or torch tensor as 16-bit PCM (no torch import: the transport uses this
    module too)."""
    if hasattr(audio, "detach"):
        audio = audio.detach().float().cpu().numpy()
    return np.round(limit(audio.astype(np.float32)) * 32767).astype("<i2").tobytes()


def wav_file(pcm: bytes, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def duration_ms(pcm_bytes: int, sample_rate: int) -> float:
    return pcm_bytes / 2 / sample_rate * 1000


# OpenAI's response formats beyond raw PCM and WAV: encoded whole by libsndfile (through soundfile),
# Ogg Opus at 24 kHz since Opus takes no 22.05 kHz input.
ENCODED = {"mp3": ("MP3", "MPEG_LAYER_III", "audio/mpeg"), "flac": ("FLAC", "PCM_16", "audio/flac"),
           "opus": ("OGG", "OPUS", "audio/ogg")}
OPUS_RATE = 24000


def encode(pcm: bytes, sample_rate: int, response_format: str) -> tuple[bytes, str]:
    """16-bit mono PCM as a file of ``response_format`` (one of ENCODED), with its content type."""
    import soundfile

    container, subtype, content_type = ENCODED[response_format]
    samples = np.frombuffer(pcm, dtype="<i2")
    if response_format == "opus" and sample_rate != OPUS_RATE:
        samples, sample_rate = resample(samples, sample_rate, OPUS_RATE), OPUS_RATE
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=container, subtype=subtype)
    return buffer.getvalue(), content_type
