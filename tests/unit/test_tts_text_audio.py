import io
import re
import wave

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nemotron_common.config import ConfigError, load
from nemotron_tts.audio import limit, to_pcm16, wav_file
from nemotron_tts.config import TTSConfig
from nemotron_tts.text import normalize, split_long


@pytest.mark.parametrize(("raw", "clean"), [
    ("\u201cQuoted\u201d and \u2018single\u2019", "\"Quoted\" and 'single'"),
    ("wait \u2014 what\u2026", "wait, what..."),
    ("Great job \U0001F600\U0001F44D !", "Great job!"),
    ("tabs\tand\nnew\r\nlines", "tabs and new lines"),
    ("**bold** and `code`", "bold and code"),
    ("zero\u200bwidth and bell\x07", "zerowidth and bell"),
    ("\U0001F600", ""),
])
def test_normalize_makes_text_the_tokenizer_can_read(raw, clean):
    assert normalize(raw) == clean


def test_a_long_sentence_is_cut_after_clauses_then_between_words():
    def fits(text):
        return len(text.split()) < 5

    sentence = "one two three, four five six seven eight; nine ten"
    assert split_long(sentence, fits) == ["one two three,", "four five six seven", "eight;", "nine ten"]
    assert split_long("\u4f60\u597d\uff0c\u4e16\u754c\u597d", lambda t: len(t) < 4) == [
        "\u4f60\u597d\uff0c", "\u4e16\u754c\u597d"]
    assert split_long("short enough", fits) == ["short enough"]


@settings(max_examples=300)
@given(st.text(alphabet=st.sampled_from("ab ,;:.\uff0c"), max_size=300), st.integers(2, 40))
def test_every_piece_fits_and_only_whitespace_at_a_cut_is_lost(text, most):
    text = normalize(text) or "a"

    def fits(piece):
        return len(piece) <= most and len(piece.split()) < 6

    pieces = split_long(text, fits)
    assert all(piece and fits(piece) for piece in pieces)
    assert re.sub(r"\s", "", "".join(pieces)) == re.sub(r"\s", "", text)


def test_limiter_leaves_quiet_audio_alone_and_never_clips():
    quiet = np.linspace(-0.9, 0.9, 1001, dtype=np.float32)
    assert np.array_equal(limit(quiet), quiet)
    loud = np.linspace(-3, 3, 10001, dtype=np.float32)
    limited = limit(loud)
    assert np.abs(limited).max() <= 1.0
    assert np.all(np.diff(limited) >= 0)
    moderate = limit(np.linspace(0.9, 1.3, 100, dtype=np.float32))
    assert moderate.max() < 1.0 and np.all(np.diff(moderate) > 0)  # peaks are squeezed, not flattened


def test_limiting_chunk_by_chunk_equals_limiting_whole():
    audio = (np.random.default_rng(0).standard_normal(5000) * 0.8).astype(np.float32)
    pieces = b"".join(to_pcm16(piece) for piece in np.split(audio, [7, 1000, 1001, 4093]))
    assert pieces == to_pcm16(audio)


def test_wav_file_is_a_real_wav():
    pcm = to_pcm16(np.sin(np.linspace(0, 100, 2205)).astype(np.float32) * 0.5)
    with wave.open(io.BytesIO(wav_file(pcm, 22050))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 22050, 2205)
        assert w.readframes(2205) == pcm


def test_config_rejects_a_default_voice_that_is_not_a_voice(tmp_path):
    model = tmp_path / "m.nemo"
    model.write_bytes(b"x")
    (tmp_path / "none.toml").write_text("")
    with pytest.raises(ConfigError, match="default_voice"):
        load(TTSConfig, "tts", path=tmp_path / "none.toml",
             flags={"model": str(model), "default_voice": "bob"})
    config = load(TTSConfig, "tts", path=tmp_path / "none.toml", flags={"model": str(model)})
    assert config.voice_names == ["john", "sofia", "aria", "jason", "leo"] and config.port == 8001


def test_codec_calls_stay_within_their_frame_budget_and_audio_goes_to_its_window():
    import torch
    from nemotron_tts.codec import MAX_FRAME_ROWS, Window, decode_windows

    calls = []

    def decode(codes, group):  # a "codec" whose sample s of row r is the row's first code + s
        calls.append(tuple(codes.shape))
        return codes[:, 0, :1].float() + torch.arange(codes.shape[-1] * 2).float()

    lengths = [8] * 130 + [300] * 9 + [2000] + [5] * 3
    windows = [Window(torch.full((4, n), float(i)), offset=1, samples=n, end=n)
               for i, n in enumerate(lengths)]
    audio = decode_windows(decode, windows)
    for i, (window, samples) in enumerate(zip(windows, audio, strict=True)):
        assert torch.equal(samples, i + torch.arange(1, 1 + window.samples).float())
    assert all(rows * frames <= MAX_FRAME_ROWS or rows == 1 for rows, _, frames in calls)
    assert (128, 4, 8) in calls  # streamed chunks of a full batch are not split
    assert sorted(rows for rows, _, frames in calls if frames == 300) == [3, 3, 3]
    assert sum(rows for rows, *_ in calls) == len(windows)
