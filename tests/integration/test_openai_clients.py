"""The official `openai` Python client against the TTS server, as OpenAI's documentation uses it:
speech in every format it offers here, at the rate OpenAI's pcm has (24 kHz), and the model list."""

import io

import numpy as np
import openai
import pytest
import soundfile
from helpers.process import ServerProcess

pytestmark = pytest.mark.slow
RATE = 24000  # what OpenAI clients assume for pcm


@pytest.fixture(scope="module")
def client(tiny_tts_model):
    proc = ServerProcess("nemotron_tts", ["--model", str(tiny_tts_model), "--device", "cpu", "--seed", "7",
                                          "--cpu-threads", "1", "--http-sample-rate", str(RATE)])
    proc.wait_ready()
    yield openai.OpenAI(base_url=proc.base + "/v1", api_key="not-needed")
    proc.terminate()


def speak(client, response_format: str):
    request = {"model": "tiny-magpie", "voice": "aria", "input": "Hello there, friend.",
               "response_format": response_format}
    with client.audio.speech.with_streaming_response.create(**request) as response:
        return response.headers, response.read()


def test_models_list(client):
    assert [m.id for m in client.models.list()] == ["tiny-magpie"]


def test_pcm_is_24_khz_and_every_format_holds_the_same_speech(client):
    headers, pcm = speak(client, "pcm")
    assert headers["x-sample-rate"] == str(RATE) and headers["transfer-encoding"] == "chunked"
    seconds = len(pcm) / 2 / RATE
    assert seconds > 0.1
    for response_format, content_type in (("wav", "audio/wav"), ("flac", "audio/flac"), ("mp3", "audio/mpeg"),
                                          ("opus", "audio/ogg")):
        headers, body = speak(client, response_format)
        assert headers["content-type"] == content_type
        audio, rate = soundfile.read(io.BytesIO(body), dtype="int16")
        assert rate == RATE, response_format
        assert abs(len(audio) / rate - seconds) < 0.08, response_format  # mp3 and opus pad a little
    # Lossless formats carry exactly the samples the pcm stream had (same seed, same batch of one).
    wav, _ = soundfile.read(io.BytesIO(speak(client, "flac")[1]), dtype="int16")
    streamed = np.frombuffer(pcm, dtype="<i2").astype(int)
    assert len(wav) == len(streamed) and np.abs(wav.astype(int) - streamed).max() <= 3


def test_an_unknown_format_names_the_valid_ones(client):
    with pytest.raises(openai.BadRequestError) as error:
        speak(client, "aac")
    assert "valid: pcm, wav, mp3, flac, opus" in str(error.value)
