import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "servers"))
sys.path.insert(0, str(ROOT / "installer"))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_asr_model(tmp_path_factory) -> Path:
    """A tiny random cache-aware FastConformer RNN-T, saved with save_to (loaded with restore_from),
    calibrated to talk when served as the tests serve it (right context 1 on the CPU)."""
    from random_models.asr import build

    return build(tmp_path_factory.mktemp("asr") / "tiny-streaming.nemo", "tiny", seed=0,
                 words_per_second=3.5, right_context=1)


@pytest.fixture(scope="session")
def tiny_tts_model(tmp_path_factory) -> Path:
    """A tiny random Magpie (decoder_ce, five baked voices) and codec, saved with save_to."""
    from random_models.tts import build

    return build(tmp_path_factory.mktemp("tts") / "tiny-magpie.nemo", "tiny", seed=0, max_decoder_steps=40)
