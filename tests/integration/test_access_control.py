"""Access control on the real servers: an API key from the systemd credential or a file, and the
browser Origin allow-list, on HTTP, on WebSocket handshakes, and never on health."""

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from helpers.process import ServerProcess, get_json
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

pytestmark = pytest.mark.slow
KEY = "k3y-for-tests_0123456789"
ALLOWED = "http://app.example:3000"


@pytest.fixture(scope="module")
def tts(tiny_tts_model, tmp_path_factory):
    """The key as systemd hands it over: a file named api-key in $CREDENTIALS_DIRECTORY."""
    credentials = tmp_path_factory.mktemp("credentials")
    (credentials / "api-key").write_text(KEY + "\n")
    proc = ServerProcess("nemotron_tts", ["--model", str(tiny_tts_model), "--device", "cpu",
                                          "--cpu-threads", "1", "--allowed-origins", ALLOWED],
                         env={"CREDENTIALS_DIRECTORY": str(credentials)})
    proc.wait_ready()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def asr(tiny_asr_model, tmp_path_factory):
    key_file = tmp_path_factory.mktemp("keys") / "asr-key"
    key_file.write_text(KEY)
    proc = ServerProcess("nemotron_asr", ["--model", str(tiny_asr_model), "--api-key-file", str(key_file),
                                          "--cpu-threads", "1"])
    proc.wait_ready()
    yield proc
    proc.terminate()


def request(url: str, body: dict | None = None, method: str | None = None, **headers):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json",
                                                                        **headers})
    try:
        with urllib.request.urlopen(req, timeout=120) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def bearer(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def handshake(url: str, **headers) -> int:
    """The HTTP status of a WebSocket handshake (101 when it upgraded)."""
    async def attempt() -> int:
        try:
            async with connect(url, additional_headers=headers, proxy=None, open_timeout=30) as ws:
                await ws.recv()  # the server's first message (ASR's ready, or TTS's reply below)
                return 101
        except InvalidStatus as refused:
            return refused.response.status_code

    return asyncio.run(attempt())


def test_health_needs_no_key(tts, asr):
    for server in (tts, asr):
        status, body = get_json(server.base + "/health")
        assert status == 200 and body["status"] == "healthy"
    assert "API key required" in tts.log() and "API key required" in asr.log()


def test_speech_needs_the_key(tts):
    speech = tts.base + "/v1/audio/speech"
    status, _, payload = request(speech, {"input": "Hello."})
    assert status == 401 and "Authorization: Bearer" in json.loads(payload)["error"]["message"]
    assert request(speech, {"input": "Hello."}, **bearer("wrong"))[0] == 401
    assert request(speech, {"input": "Hello."}, Authorization=KEY)[0] == 401  # no scheme
    assert request(tts.base + "/v1/audio/config")[0] == 401
    assert request(tts.base + "/metrics")[0] == 401 and request(tts.base + "/metrics", **bearer())[0] == 200
    status, _, pcm = request(speech, {"input": "Hello."}, **bearer())
    assert status == 200 and len(pcm) > 0


def test_websockets_need_the_key(tts, asr):
    assert handshake(asr.ws_url) == 401
    assert handshake(asr.ws_url, **bearer("wrong")) == 401
    assert handshake(asr.ws_url, **bearer()) == 101
    tts_ws = tts.ws_url + "ws/tts/stream"
    assert handshake(tts_ws) == 401

    async def tts_session() -> dict:
        async with connect(tts_ws, additional_headers=bearer(), proxy=None) as ws:
            await ws.send(json.dumps({"type": "ping"}))
            return json.loads(await ws.recv())

    assert asyncio.run(tts_session()) == {"type": "pong"}


def test_browser_origins_need_the_allow_list(tts, asr):
    """A page on another site cannot drive the services, even where the key would let it."""
    assert handshake(asr.ws_url, Origin=ALLOWED, **bearer()) == 403  # ASR allows no origin
    assert handshake(tts.ws_url + "ws/tts/stream", Origin="http://evil.example", **bearer()) == 403
    status, headers, _ = request(tts.base + "/v1/audio/speech", {"input": "Hi."}, Origin="http://evil.example",
                                 **bearer())
    assert status == 403 and "Access-Control-Allow-Origin" not in headers


def test_an_allowed_origin_gets_cors(tts):
    status, headers, _ = request(tts.base + "/v1/audio/speech", method="OPTIONS", Origin=ALLOWED,
                                 **{"Access-Control-Request-Method": "POST"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    status, headers, pcm = request(tts.base + "/v1/audio/speech", {"input": "Hi."}, Origin=ALLOWED,
                                   **bearer())
    assert status == 200 and len(pcm) > 0 and headers["Access-Control-Allow-Origin"] == ALLOWED
