"""16-bit mono PCM from one sample rate to another with soxr: whole, or chunk by chunk without seams."""

from __future__ import annotations

import numpy as np


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    import soxr

    return soxr.resample(samples, rate_in, rate_out, quality="HQ")


class StreamResampler:
    """Chunks of one stream, resampled with the filter state carried from chunk to chunk."""

    def __init__(self, rate_in: int, rate_out: int) -> None:
        import soxr

        self._stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16", quality="HQ")

    def chunk(self, pcm: bytes, last: bool = False) -> bytes:
        return self._stream.resample_chunk(np.frombuffer(pcm, dtype="<i2"), last=last).astype("<i2").tobytes()
