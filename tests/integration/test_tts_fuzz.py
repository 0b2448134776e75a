"""Property-based fuzzing of what TTS clients send: the WebSocket messages through the real session
and catalog (the tiny model's tokenizer), and the HTTP speech request against the real server.
Whatever arrives, the answer is a protocol message or a 4xx naming the problem, never a crash."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from helpers.process import ServerProcess
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.slow
REPLIES = {"stream_created", "error", "done", "pong"}

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
words = st.sampled_from(["Hello there.", "", "   ", "\U0001F600", "Ünïcödé text!", "x" * 4001, "Fine."])
fields = {
    "type": st.sampled_from(["init", "text", "close", "cancel", "ping", "nope"]) | json_values,
    "text": words | json_values, "voice": st.sampled_from(["aria", "ARIA ", "bob"]) | json_values,
    "language": st.sampled_from(["en", "xx"]) | json_values,
    "mode": st.sampled_from(["stream", "batch", "fast"]) | json_values,
    "default_mode": st.sampled_from(["stream", "batch"]) | json_values,
    "preset": st.sampled_from(["aggressive", "balanced", "slow"]) | json_values,
}
ws_messages = (st.fixed_dictionaries({}, optional=fields).map(json.dumps) | st.text(max_size=50)
               | st.binary(max_size=8))


@pytest.fixture(scope="module")
def catalog_and_engine(tiny_tts_model):
    """The real catalog and engine class; the engine is never started, so accepted segments only queue."""
    from nemotron_tts.catalog import Catalog
    from nemotron_tts.config import VOICES
    from nemotron_tts.engine import Engine
    from nemotron_tts.model import SpeechModel

    model = SpeechModel(tiny_tts_model, "cpu", use_cfg=False)
    catalog = Catalog(VOICES.split(","), "aria", list(model.languages), model.tokenize, 4000)
    return catalog, Engine(model, max_batch=4)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ws_messages, min_size=1, max_size=6))
def test_any_websocket_message_gets_a_protocol_answer(catalog_and_engine, frames):
    from nemotron_tts.session import StreamSession

    catalog, engine = catalog_and_engine

    async def scenario() -> list:
        sent: list = []
        session = StreamSession(engine, catalog, sent.append)
        for frame in frames:
            session.receive(frame)
        session.cancel()
        return sent

    for reply in asyncio.run(scenario()):
        message = json.loads(reply)
        assert message["type"] in REPLIES
        if message["type"] == "error":
            assert message["message"] and message["fatal"] is False


@pytest.fixture(scope="module")
def server(tiny_tts_model):
    proc = ServerProcess("nemotron_tts", ["--model", str(tiny_tts_model), "--device", "cpu",
                                          "--cpu-threads", "1", "--max-text-chars", "60",
                                          "--warmup-text", "A short warm-up."])
    proc.wait_ready()
    yield proc
    proc.terminate()


speech_fields = {"input": st.sampled_from(["Hi.", "", "\U0001F600", "y" * 61]) | json_values,
                 "voice": st.sampled_from(["aria", "bob"]) | json_values,
                 "language": st.sampled_from(["en", "xx"]) | json_values,
                 "response_format": st.sampled_from(["pcm", "wav", "mp3"]) | json_values,
                 "speed": st.sampled_from([1.0, 1, 2.0]) | json_values,
                 "stream": st.booleans() | json_values, "model": json_values}
bodies = (st.fixed_dictionaries({}, optional=speech_fields).map(json.dumps) | json_values.map(json.dumps)
          | st.text(max_size=40))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies)
def test_any_speech_request_gets_audio_or_a_400_naming_the_problem(server, body):
    request = urllib.request.Request(server.base + "/v1/audio/speech", body.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200 and len(response.read()) > 0
    except urllib.error.HTTPError as error:
        assert error.code == 400, error.read()
        assert json.loads(error.read())["error"]["message"]
