"""An utterance's text grown token by token against NeMo decoding all tokens at once (real NeMo)."""

import random
import re

import pytest
import torch
from nemotron_asr.decoder import UtteranceText
from nemotron_asr.model import restore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def decoding(tiny_asr_model):
    return restore(tiny_asr_model, torch.device("cpu")).decoding


def grow_and_compare(decoding, seed: int) -> None:
    rng = random.Random(seed)
    vocab = decoding.tokenizer.vocab_size
    for _ in range(40):
        text, tokens = UtteranceText(decoding), []
        for _ in range(rng.randrange(1, 15)):
            new = [rng.randrange(vocab) for _ in range(rng.randrange(0, 4))]
            tokens += new
            assert text.add(new) == decoding.decode_tokens_to_str_with_strip_punctuation(tokens).strip()


def test_growing_text_equals_nemo_decoding_all_tokens(decoding):
    grow_and_compare(decoding, seed=0)


def test_growing_text_applies_nemo_punctuation_rule(decoding):
    tokenizer = decoding.tokenizer
    pieces = {tokenizer.ids_to_tokens([i])[0].lstrip("▁") for i in range(tokenizer.vocab_size)}
    marks = {p for p in pieces if len(p) == 1}  # stand-ins: NeMo's rule only needs them in the vocabulary
    assert marks
    decoding.supported_punctuation = marks
    decoding.space_before_punct_pattern = re.compile(r"(\s)(" + "|".join(re.escape(m) for m in marks) + ")")
    try:
        grow_and_compare(decoding, seed=1)
    finally:
        decoding.supported_punctuation = set()
