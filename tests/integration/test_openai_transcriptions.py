"""The official `openai` Python client against the ASR server's ``POST /v1/audio/transcriptions``:
every response format, streamed deltas, other sample rates and containers, and clear errors."""

import io
import re
import time

import numpy as np
import openai
import pytest
import soundfile
import soxr
from helpers.asr_client import pcm_as_float, to_pcm
from helpers.process import ServerProcess, scrape

from random_models.asr import speechlike_audio

pytestmark = pytest.mark.slow
RATE = 16000


@pytest.fixture(scope="module")
def server(tiny_asr_model):
    proc = ServerProcess("nemotron_asr", ["--model", str(tiny_asr_model), "--max-sessions", "4",
                                          "--right-context", "1", "--max-upload-mb", "1"])
    proc.wait_ready()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="not-needed", max_retries=0)


@pytest.fixture(scope="module")
def offline(tiny_asr_model):
    from nemotron_asr.model import StreamingModel

    model = StreamingModel(tiny_asr_model, 1, max_streams=1)
    return lambda samples: model.transcribe_offline(samples)


def encoded(samples: np.ndarray, rate: int, file_format: str, subtype: str | None = None) -> bytes:
    out = io.BytesIO()
    soundfile.write(out, samples, rate, format=file_format, subtype=subtype)
    return out.getvalue()


def transcribe(client, data: bytes, name: str = "clip.wav", **options):
    return client.audio.transcriptions.create(model="tiny-streaming", file=(name, data), **options)


@pytest.fixture(scope="module")
def speech():
    """Six seconds the tiny model talks through (a clip it was calibrated on), as the 16-bit samples
    the server will see."""
    return pcm_as_float(to_pcm(speechlike_audio(6.0, seed=1000)))


def test_json_text_equals_offline_transcription(client, speech, offline):
    expected = offline(speech)
    assert expected, "the tiny model should say something on this clip"
    result = transcribe(client, encoded(speech, RATE, "WAV", "PCM_16"))
    assert result.text == expected
    assert transcribe(client, encoded(speech, RATE, "FLAC"), "clip.flac", response_format="text").strip() \
        == expected


def test_other_rates_and_channels_are_resampled_to_the_model(client, speech, offline):
    at_8k = soxr.resample(speech, RATE, 8000)
    stereo = np.stack([at_8k, at_8k], axis=1)
    expected = offline(soxr.resample(at_8k.astype("float32"), 8000, RATE, quality="HQ"))
    result = transcribe(client, encoded(stereo, 8000, "WAV", "FLOAT"))
    # 16-bit rounding of the resampled signal may flip a token of a random model; nearly all must agree.
    assert _similar(result.text, expected)
    mp3 = encoded(speech, RATE, "MP3")
    assert transcribe(client, mp3, "clip.mp3").text  # decodes and transcribes


def _similar(a: str, b: str) -> bool:
    words_a, words_b = a.split(), b.split()
    same = sum(x == y for x, y in zip(words_a, words_b, strict=False))
    return abs(len(words_a) - len(words_b)) <= 2 and same >= 0.8 * max(len(words_a), len(words_b))


def test_verbose_json_times_words_and_segments_within_the_audio(client, speech):
    result = transcribe(client, encoded(speech, RATE, "WAV"), response_format="verbose_json",
                        timestamp_granularities=["word", "segment"])
    duration = len(speech) / RATE
    assert result.language == "english" and abs(result.duration - duration) < 0.01
    assert " ".join(w.word for w in result.words) == " ".join(result.text.split())
    ends = [w.end for w in result.words]
    assert ends == sorted(ends) and 0 < ends[-1] <= duration
    assert all(w.start <= w.end for w in result.words)
    assert " ".join(s.text for s in result.segments) == " ".join(result.text.split())
    assert result.segments[-1].end <= duration


def test_srt_and_vtt_cues(client, speech):
    data = encoded(speech, RATE, "WAV")
    srt = transcribe(client, data, response_format="srt")
    vtt = transcribe(client, data, response_format="vtt")
    stamp = r"\d\d:\d\d:\d\d[,.]\d\d\d --> \d\d:\d\d:\d\d[,.]\d\d\d"
    assert re.match(r"1\n" + stamp, srt)
    assert vtt.startswith("WEBVTT\n\n") and re.search(stamp, vtt)
    assert len(re.findall(stamp, srt)) == len(re.findall(stamp, vtt)) >= 1


def test_streamed_deltas_add_up_to_the_transcript(client, speech):
    data = encoded(speech, RATE, "WAV")
    whole = transcribe(client, data).text
    events = list(transcribe(client, data, stream=True))
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert events[-1].type == "transcript.text.done" and events[-1].text == whole
    assert "".join(deltas) == whole and len(deltas) > 1  # interims flowed before the final


@pytest.mark.parametrize(("data", "options", "fragment"), [
    (b"not audio at all", {}, "cannot decode the audio"),
    (b"", {}, "empty"),
    (None, {"language": "fr"}, "English only"),
    (None, {"response_format": "srt", "stream": True}, "use response_format json or text"),
    (None, {"response_format": "xml"}, "valid: json, text, verbose_json, srt, vtt"),
])
def test_bad_uploads_get_a_clear_400(client, speech, data, options, fragment):
    data = encoded(speech, RATE, "WAV") if data is None else data
    with pytest.raises(openai.BadRequestError) as error:
        transcribe(client, data, **options)
    assert fragment in str(error.value)


def test_a_file_over_the_limit_gets_413_and_metrics_count_the_work(client, server):
    big = encoded(np.zeros(40 * RATE, dtype="float32"), RATE, "WAV", "PCM_16")  # 1.3 MB > 1 MiB
    with pytest.raises(openai.APIStatusError) as error:
        transcribe(client, big)
    assert error.value.status_code == 413 and "limit" in str(error.value)
    samples = scrape(server.base)
    assert samples[("nemotron_asr_transcription_seconds_count", ())] >= 5
    assert samples[("nemotron_asr_errors_total", (("kind", "bad_request"),))] >= 1


def test_uploads_count_against_the_session_limit_and_give_their_place_back(client, server, speech):
    """Uploads and WebSocket streams share max_sessions: with every place taken by streams an upload
    gets 429 with Retry-After; every upload before, refused or served, gave its place back."""
    import asyncio

    from helpers.asr_client import ASRClient

    assert server.health()[1]["sessions"] == 0  # after the tests above: bad uploads, a 413, served ones

    async def full_house():
        streams = [await ASRClient.open(server.ws_url) for _ in range(4)]
        with pytest.raises(openai.RateLimitError) as error:
            await asyncio.to_thread(transcribe, client, encoded(speech, RATE, "WAV"))
        for stream in streams:
            await stream.close()
        return error.value

    refusal = asyncio.run(asyncio.wait_for(full_house(), 60))
    assert refusal.response.headers["Retry-After"] == "1" and "too many sessions" in str(refusal)
    deadline = time.monotonic() + 10  # the closed streams give their places back
    while server.health()[1]["sessions"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert transcribe(client, encoded(speech, RATE, "WAV")).text
