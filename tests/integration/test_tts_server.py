"""The real nemotron-tts process over loopback: HTTP, the WebSocket contract, readiness, drain."""

import asyncio
import io
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
import wave

import numpy as np
import pytest
from helpers.process import ServerProcess, engine_process_of, get_json, scrape
from helpers.tts_client import TTSClient

pytestmark = pytest.mark.slow
SEED = 11
TEXT = "Hello there, friend. How are you today?"
SAMPLES_PER_FRAME = 1024


@pytest.fixture(scope="module", params=["fixed", "continuous", "process"])
def server(tiny_tts_model, request):
    """The whole contract is checked with fixed batches, with continuous batching (the default), and
    with the engine in a process of its own (default batching, joiners' prompts a CFG pair of rows
    at a time)."""
    mode = {"fixed": ["--no-continuous-batching"], "continuous": [],
            "process": ["--engine-host", "process", "--prefill-rows", "2"]}[request.param]
    proc = ServerProcess("nemotron_tts", ["--model", str(tiny_tts_model), "--device", "cpu", *mode,
                                          "--seed", str(SEED), "--max-sessions", "6", "--max-batch", "8",
                                          "--idle-timeout", "2", "--cpu-threads", "1"],
                         env={"WATCHDOG_USEC": "1000000", "JOURNAL_STREAM": "8:1"})
    proc.wait_listening()
    proc.health_while_starting = proc.health()
    proc.speech_while_starting = post(proc, {"input": "too early"})
    proc.wait_ready()
    proc.ws = f"ws://127.0.0.1:{proc.port}/ws/tts/stream"
    proc.engine_host = "process" if request.param == "process" else "thread"
    yield proc
    proc.terminate()


def post(server, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    request = urllib.request.Request(server.base + "/v1/audio/speech", data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 180))


def test_readiness_reported_to_systemd_after_warmup(server):
    assert server.health_while_starting == (503, server.health_while_starting[1])
    assert server.health_while_starting[1]["status"] == "loading"
    # READY=1 is sent before /health says 200; the listener's thread records it on its own schedule
    assert server.notify.wait_for("READY=1", timeout=5)
    fields = server.notify.fields()
    before = fields[:fields.index("READY=1")]
    assert any(f.startswith("STATUS=loading") for f in before)
    assert any(f.startswith("STATUS=warming up") for f in before)
    assert server.notify.wait_for("WATCHDOG=1", timeout=5)
    assert "<5>" in server.log() and "ready on cpu" in server.log()
    assert f"(engine in a {server.engine_host})" in server.log()
    assert "torch intra-op threads: 1" in server.log()
    for path in ("/health", "/v1/health/ready", "/v1/health/live"):
        status, body = server.health(path)
        assert status == 200 and body["status"] == "healthy" and body["model_loaded"] is True
        assert body["gpu_memory_mib"] == 0 and body["max_batch"] == 8  # (on the CPU)


def test_requests_while_loading_get_503(server):
    status, _, payload = server.speech_while_starting
    assert status == 503 and "not ready" in json.loads(payload)["error"]["message"]


def test_audio_config(server):
    status, config = get_json(server.base + "/v1/audio/config")
    assert status == 200
    assert config["sample_rate"] == 22050 and config["channels"] == 1 and config["encoding"] == "pcm_s16le"
    assert config["voices"] == ["john", "sofia", "aria", "jason", "leo"]
    assert {"en", "de", "es", "fr", "it"} <= set(config["languages"])
    status, models = get_json(server.base + "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "tiny-magpie"


def test_http_pcm_and_real_wav(server):
    status, headers, pcm = post(server, {"input": TEXT, "voice": "aria", "language": "en", "model": "ignored",
                                         "response_format": "pcm", "speed": 1.0, "stream": False})
    assert status == 200
    assert headers["X-Sample-Rate"] == "22050" and headers["X-Channels"] == "1"
    assert headers["X-Encoding"] == "pcm_s16le"
    assert len(pcm) > 0 and len(pcm) % (2 * SAMPLES_PER_FRAME) == 0
    assert float(headers["X-Duration-Ms"]) == pytest.approx(len(pcm) / 2 / 22050 * 1000, abs=0.1)
    status, headers, body = post(server, {"input": TEXT, "response_format": "wav", "stream": False})
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    with wave.open(io.BytesIO(body)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        assert w.getnframes() * 2 == len(pcm)  # same seed, same voice: the same utterance


def _same_audio(a: bytes, b: bytes) -> bool:
    a, b = np.frombuffer(a, "<i2").astype(int), np.frombuffer(b, "<i2").astype(int)
    return a.shape == b.shape and np.abs(a - b).max() <= 1  # float rounding of other decode sizes: 1 LSB


def test_http_body_streams_as_it_is_made(server):
    """By default the body is chunked PCM (or a WAV header, then PCM) sent as the audio is decoded,
    and it is the same utterance the buffered answer gives."""
    _, _, whole = post(server, {"input": TEXT, "stream": False})
    status, headers, pcm = post(server, {"input": TEXT})
    assert status == 200 and headers["Transfer-Encoding"] == "chunked" and "X-Duration-Ms" not in headers
    assert headers["Content-Type"] == "audio/pcm" and headers["X-Sample-Rate"] == "22050"
    assert _same_audio(pcm, whole)
    status, headers, body = post(server, {"input": TEXT, "response_format": "wav"})
    assert status == 200 and headers["Content-Type"] == "audio/wav"
    with wave.open(io.BytesIO(body)) as w:  # sizes unknown when the header went out
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        assert _same_audio(w.readframes(10**9), whole)


def test_a_dropped_http_request_stops_its_synthesis(server):
    """A client that hangs up frees its batch row: the engine stops the job instead of finishing it."""
    before = server.health()[1]["engine"]["cancelled"]
    body = json.dumps({"input": " ".join(f"Sentence number {i} of a long reply." for i in range(40))})
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(f"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
        time.sleep(0.3)
    deadline = time.monotonic() + 30
    while server.health()[1]["engine"]["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.health()[1]["engine"]["cancelled"] == before + 1


def test_metrics_after_traffic(server):
    before = scrape(server.base)
    assert post(server, {"input": "Measured once."})[0] == 200
    assert post(server, {"input": "hi", "voice": "bob"})[0] == 400

    async def scenario():
        client = await TTSClient.open(server.ws)
        await client.send(type="text", text="Measured twice.", mode="stream")
        await client.until("segment_complete")
        await client.send(type="nope")
        await client.until("error")
        await client.close()

    run(scenario())
    after = scrape(server.base)

    def grew(name, *labels):
        return after[(name, tuple(sorted(labels)))] - before.get((name, tuple(sorted(labels))), 0.0) >= 1

    assert grew("nemotron_tts_first_audio_seconds_count", ("endpoint", "http"))
    assert grew("nemotron_tts_first_audio_seconds_count", ("endpoint", "websocket"))
    assert grew("nemotron_tts_segments_total", ("endpoint", "http"), ("outcome", "complete"))
    assert grew("nemotron_tts_segments_total", ("endpoint", "websocket"), ("outcome", "complete"))
    assert grew("nemotron_tts_errors_total", ("kind", "bad_request"))
    assert grew("nemotron_tts_errors_total", ("kind", "bad_message"))
    assert grew("nemotron_tts_queue_wait_seconds_count") and grew("nemotron_tts_batch_size_count")
    assert after[("nemotron_tts_queued_segments", ())] == 0 and ("nemotron_tts_sessions", ()) in after


def test_a_connection_that_sends_nothing_is_closed(server):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.settimeout(30)
        assert raw.recv(1) == b""
    assert 1.5 < time.monotonic() - started < 10  # --idle-timeout 2


@pytest.mark.parametrize(("body", "fragment"), [
    ({"input": ""}, "text is empty"),
    ({"input": "   "}, "text is empty"),
    ({"voice": "aria"}, "text is empty"),
    ({"input": "\U0001F600\U0001F600"}, "nothing speakable"),
    ({"input": "hi", "voice": "bob"}, "valid voices: john, sofia, aria, jason, leo"),
    ({"input": "hi", "language": "xx"}, "valid languages: en"),
    ({"input": "hi", "response_format": "aac"}, "valid: pcm, wav, mp3, flac, opus"),
    ({"input": "hi", "speed": 2.0}, "speed"),
    ({"input": "hi", "speed": True}, "speed"),
    ({"input": "hi", "stream": "yes"}, "stream must be true or false"),
    ({"input": "hi", "voice": 5}, "voice must be a string, not int"),
    ({"input": "hi", "language": 5}, "language must be a string, not int"),
    ({"input": ["hi"]}, "text must be a string, not list"),
    ({"input": "hi", "response_format": ["wav"]}, "unknown response_format"),
    ({"input": "hi " * 2000}, "longer than 4000 characters"),
    (["not", "an", "object"], "JSON object"),
])
def test_http_errors_name_the_problem(server, body, fragment):
    status, _, payload = post(server, body)
    assert status == 400
    assert fragment in json.loads(payload)["error"]["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[" * 5000 + b"]" * 5000])  # nested past the parser
def test_http_rejects_broken_json(server, raw):
    status, _, payload = post(server, None, raw=raw)
    assert status == 400 and "JSON" in json.loads(payload)["error"]["message"]


def test_streamed_audio_equals_batch_synthesis(server):
    """Same seed, same text: the stream mode's chunks join into exactly the batch mode's audio."""
    _, _, whole = post(server, {"input": TEXT, "voice": "jason"})

    async def scenario():
        client = await TTSClient.open(server.ws)
        await client.send(type="init", voice="jason", language="en")
        await client.until("stream_created")
        start = len(client.got.items)
        await client.send(type="text", text=TEXT, mode="stream", preset="aggressive")
        complete = await client.until("segment_complete")
        await client.close()
        return client.got, start, complete

    got, start, complete = run(scenario())
    chunks = [item for item in got.items[start:] if isinstance(item, bytes)]
    assert len(chunks) > 3  # really streamed, chunk by chunk
    streamed = np.frombuffer(b"".join(chunks), "<i2").astype(int)
    batch = np.frombuffer(whole, "<i2").astype(int)
    assert streamed.shape == batch.shape
    assert np.abs(streamed - batch).max() <= 1  # float rounding of a differently sized decode: 1 LSB
    assert complete["audio_ms"] == pytest.approx(len(whole) / 2 / 22050 * 1000, abs=0.1)


def test_stream_contract_from_init_to_done(server):
    async def scenario():
        client = await TTSClient.open(server.ws)
        await client.send(type="ping")
        assert (await client.receive()) == {"type": "pong"}
        await client.send(type="text", text="First segment.", mode="stream", preset="balanced")
        created = await client.until("stream_created")  # implicit stream
        await client.send(type="text", text="Second, whole.", mode="batch")
        await client.send(type="close")
        await client.send(type="text", text="Third, after close but before done.", preset="conservative")
        done = await client.until("done")
        await client.close()
        return client.got, created, done

    got, created, done = run(scenario())
    assert created["stream_id"]
    completes = got.messages("segment_complete")
    assert [m["segment"] for m in completes] == [1, 2, 3]
    assert done["segments_generated"] == 3
    assert done["total_audio_ms"] == pytest.approx(sum(m["audio_ms"] for m in completes), abs=0.5)
    assert len(got.audio_after()) / 2 / 22050 * 1000 == pytest.approx(done["total_audio_ms"], abs=0.5)


def test_cancel_fences_audio_of_the_cancelled_stream(server):
    async def scenario():
        client = await TTSClient.open(server.ws)
        await client.send(type="init", voice="sofia")
        first = await client.until("stream_created")
        await client.send(type="text", text=TEXT + " " + TEXT, mode="stream", preset="aggressive")
        await client.send(type="text", text="Queued and dropped.", mode="stream")
        while not isinstance(await client.receive(), bytes):
            pass  # wait for the first audio chunk, then interrupt
        await client.send(type="cancel")
        await client.send(type="text", text="After the cancel.", mode="stream", preset="aggressive")
        second = await client.until("stream_created")
        fence = len(client.got.items)
        complete = await client.until("segment_complete")
        await client.send(type="close")
        done = await client.until("done")
        await client.close()
        return client.got, first, second, fence, complete, done

    got, first, second, fence, complete, done = run(scenario())
    assert first["stream_id"] != second["stream_id"]
    after = got.audio_after(fence)
    # Everything after the new stream_created is the new segment's audio, and nothing else.
    assert len(after) / 2 / 22050 * 1000 == pytest.approx(complete["audio_ms"], abs=0.1)
    assert complete["segment"] == 1 and done["segments_generated"] == 1


def test_bad_messages_get_errors_and_the_session_lives_on(server):
    async def scenario():
        client = await TTSClient.open(server.ws)
        replies = []
        await client.ws.send("{not json")
        replies.append(await client.until("error"))
        await client.ws.send(b"\x00\x01")
        replies.append(await client.until("error"))
        await client.send(type="dance")
        replies.append(await client.until("error"))
        await client.send(type="init", voice="bob")
        replies.append(await client.until("error"))
        await client.send(type="init", language="klingon")
        replies.append(await client.until("error"))
        await client.send(type="text", text="hi", mode="loud")
        replies.append(await client.until("error"))
        await client.send(type="text", text="")
        replies.append(await client.until("error"))
        await client.send(type="init", voice=5)
        replies.append(await client.until("error"))
        await client.send(type="text", text="hi", preset=["x"])
        replies.append(await client.until("error"))
        await client.send(type=["init"])
        replies.append(await client.until("error"))
        await client.ws.send("[" * 5000 + "]" * 5000)
        replies.append(await client.until("error"))
        await client.send(type="ping")
        pong = await client.until("pong")
        await client.close()
        return replies, pong

    replies, pong = run(scenario())
    messages = [r["message"] for r in replies]
    assert "JSON" in messages[0] and "binary" in messages[1] and "dance" in messages[2]
    assert "valid voices" in messages[3] and "valid languages" in messages[4]
    assert "mode" in messages[5] and "empty" in messages[6]
    assert "voice must be a string" in messages[7] and "unknown preset" in messages[8]
    assert "unknown message type" in messages[9] and "JSON" in messages[10]
    assert all(r["fatal"] is False for r in replies) and pong == {"type": "pong"}


def test_an_over_long_text_is_refused_and_fails_no_other_client(server):
    """A text the model cannot take is refused at admission, so it never shares a batch: the other
    client's segments, sent at the same moment, all come back as audio."""
    async def careless():
        client = await TTSClient.open(server.ws)
        await client.send(type="init")
        await client.until("stream_created")
        await client.send(type="text", text="word " * 3000)
        error = await client.until("error")
        await client.close()
        return error

    async def bystander():
        client = await TTSClient.open(server.ws)
        await client.send(type="init")
        for n in range(3):
            await client.send(type="text", text=f"Segment {n} of a careful client.")
        await client.send(type="close")
        done = await client.until("done")
        await client.close()
        return client.got, done

    async def scenario():
        return await asyncio.gather(careless(), bystander())

    error, (got, done) = run(scenario())
    assert "longer than 4000 characters" in error["message"] and error["fatal"] is False
    assert done["segments_generated"] == 3 and got.messages("error") == []


def test_a_long_text_does_not_hold_other_clients_until_its_end(server):
    """One client's paragraph (several sentence chunks) runs a chunk at a time: another client's
    sentence, sent once the paragraph's first audio is out, is spoken before the paragraph ends (an
    engine that ran the paragraph whole spoke it after)."""
    paragraph = " ".join(f"Sentence number {i} of a long reply." for i in range(8))
    first_audio = threading.Event()

    def stream_paragraph():  # the default body: chunked PCM, sent as each chunk is decoded
        request = urllib.request.Request(server.base + "/v1/audio/speech", method="POST",
                                         data=json.dumps({"input": paragraph}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            head = response.read(64)
            first_audio.set()
            pcm = head + response.read()
        return response.status, pcm, time.monotonic()

    async def scenario():
        long = asyncio.ensure_future(asyncio.to_thread(stream_paragraph))
        assert await asyncio.to_thread(first_audio.wait, 60)  # the paragraph is being made
        client = await TTSClient.open(server.ws)
        await client.send(type="text", text="A short answer.", mode="stream")
        await client.until("segment_complete")
        short_done = time.monotonic()
        await client.close()
        status, pcm, long_done = await long
        return short_done, long_done, status, pcm

    short_done, long_done, status, pcm = run(scenario())
    assert status == 200 and len(pcm) > 0
    assert short_done < long_done  # not after all eight sentences


def test_concurrent_clients_get_complete_audio_in_shared_batches(server):
    before = server.health()[1]["engine"]["batches"]

    async def one(index):
        client = await TTSClient.open(server.ws)
        await client.send(type="init", voice=["john", "sofia", "aria", "jason", "leo"][index % 5])
        for n in range(2):
            await client.send(type="text", text=f"Client {index} says segment {n}.", mode="stream")
        await client.send(type="close")
        done = await client.until("done")
        await client.close()
        return client.got, done

    async def scenario():
        return await asyncio.gather(*(one(i) for i in range(5)))

    results = run(scenario())
    for got, done in results:
        assert done["segments_generated"] == 2
        assert len(got.audio_after()) / 2 / 22050 * 1000 == pytest.approx(done["total_audio_ms"], abs=0.5)
        assert len(got.audio_after()) % (2 * SAMPLES_PER_FRAME) == 0
    engine = server.health()[1]["engine"]
    if not engine["continuous"]:  # (continuous batching counts decoder steps)
        assert engine["batches"] - before < 10  # 10 segments, fewer batches: they were generated together
    assert engine["largest_batch"] > 1


def test_sigterm_drains_queued_segments_then_closes(tiny_tts_model):
    # A generous drain: on a loaded 2-core CI machine two tiny segments have taken over 30 s.
    proc = ServerProcess("nemotron_tts", ["--model", str(tiny_tts_model), "--device", "cpu",
                                          "--max-batch", "2", "--drain-timeout", "150"])
    proc.wait_ready()

    async def scenario():
        client = await TTSClient.open(f"ws://127.0.0.1:{proc.port}/ws/tts/stream")
        await client.send(type="text", text=TEXT, mode="stream")
        await client.send(type="text", text="And one more after it.", mode="batch")
        await client.until("stream_created")
        http = asyncio.ensure_future(asyncio.to_thread(post, proc, {"input": "Speech asked over HTTP."}))
        await asyncio.sleep(0.5)  # in flight
        proc.process.send_signal(signal.SIGTERM)
        completes = [await client.until("segment_complete", 150), await client.until("segment_complete", 150)]
        with pytest.raises(Exception) as closed:
            await client.receive(timeout=60)
        return completes, getattr(closed.value, "rcvd", None), await http

    try:
        completes, close_frame, (status, _, pcm) = asyncio.run(asyncio.wait_for(scenario(), 400))
        assert proc.process.wait(60) == 0
    finally:
        proc.terminate()
    assert [c["segment"] for c in completes] == [1, 2]
    assert close_frame is not None and close_frame.code == 1001
    assert status == 200 and len(pcm) > 0 and len(pcm) % (2 * SAMPLES_PER_FRAME) == 0


def test_a_dead_engine_process_fails_the_service(tiny_tts_model):
    proc = ServerProcess("nemotron_tts", ["--model", str(tiny_tts_model), "--device", "cpu",
                                          "--cpu-threads", "1", "--engine-host", "process"])
    proc.wait_ready()
    try:
        os.kill(engine_process_of(proc.process.pid), signal.SIGKILL)
        code = proc.process.wait(30)
    finally:
        proc.terminate()
    assert code != 0
    assert "TTS engine failed" in proc.log() and "exit code -9" in proc.log()
