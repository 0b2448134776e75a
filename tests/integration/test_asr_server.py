"""The real nemotron-asr process over loopback: protocol, bad input, readiness, health, drain."""

import asyncio
import json
import os
import signal
import socket
import time
from pathlib import Path

import pytest
from helpers.asr_client import ASRClient, pcm_as_float, to_pcm
from helpers.process import ServerProcess, engine_process_of, get_json, scrape, spawned_children, tcp_sockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from random_models.asr import speechlike_audio

pytestmark = pytest.mark.slow
MAX_SESSIONS = 3


SETUPS = {"process": ["--engine-host", "process"], "thread": ["--engine-host", "thread"],
          "workers": ["--engine-host", "process", "--workers", "2"]}


@pytest.fixture(scope="module", params=list(SETUPS))
def server(request, tiny_asr_model):
    """The server with its engine in a child process (the default), in a thread, and in a child
    process serving two transport workers that share the port: the same contract."""
    proc = ServerProcess("nemotron_asr", ["--model", str(tiny_asr_model), "--max-sessions", str(MAX_SESSIONS),
                                          "--max-frame-bytes", "64000", "--right-context", "1",
                                          *SETUPS[request.param]],
                         env={"WATCHDOG_USEC": "1000000", "JOURNAL_STREAM": "8:1"})
    proc.setup = request.param
    proc.wait_listening()
    proc.health_while_starting = proc.health()
    proc.wait_ready()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module")
def offline(tiny_asr_model):
    from nemotron_asr.model import StreamingModel

    model = StreamingModel(tiny_asr_model, 1, max_streams=1)
    return lambda pcm: model.transcribe_offline(pcm_as_float(pcm))


def clip(seconds, seed):
    return to_pcm(speechlike_audio(seconds, seed))


def running(pid):
    """Alive and not a zombie waiting for whoever inherited it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_readiness_reported_to_systemd_after_warmup(server):
    assert server.health_while_starting[0] == 503
    assert server.health_while_starting[1]["status"] == "loading"
    # READY=1 is sent before /health says 200; the listener's thread records it on its own schedule
    assert server.notify.wait_for("READY=1", timeout=5)
    fields = server.notify.fields()
    ready = fields.index("READY=1")
    before = fields[:ready]
    assert any(f.startswith("STATUS=loading") for f in before)
    assert any(f.startswith("STATUS=warming up") for f in before)
    assert any(f.startswith("EXTEND_TIMEOUT_USEC=") for f in before)
    assert server.notify.wait_for("WATCHDOG=1", timeout=5)
    assert all(f.encode("ascii") for f in fields)


def test_health_endpoints(server):
    for path in ("/health", "/v1/health/ready", "/v1/health/live"):
        status, body = server.health(path)
        assert status == 200 and body["status"] == "healthy" and body["model_loaded"] is True
        assert body["gpu_memory_mib"] == 0 and body["max_sessions"] == MAX_SESSIONS  # (on the CPU)
        assert body.get("workers") == (2 if server.setup == "workers" else None)
    assert get_json(server.base + "/nope")[0] == 404
    status, models = get_json(server.base + "/v1/models")
    assert status == 200 and models["object"] == "list" and models["data"][0]["id"] == "tiny-streaming"


def test_journal_priorities_in_the_log(server):
    assert "<5>" in server.log() and "ready on cpu" in server.log()
    assert ("engine in a process" in server.log()) != ("engine in a thread" in server.log())


def test_the_engine_uses_the_cores_it_may(server):
    """On the CPU the default is every core in the affinity mask, set on purpose where the engine runs."""
    assert f"torch intra-op threads: {len(os.sched_getaffinity(0))}" in server.log()


def test_final_transcript_equals_offline_and_resets_behave(server, offline):
    first, second = clip(2.37, 3), clip(1.3, 0)
    expected_first, expected_second = offline(first), offline(second)
    assert expected_first and expected_second and expected_first != expected_second

    async def scenario():
        client = await ASRClient.open(server.ws_url)
        await client.send_audio(first)
        await client.reset(finalize=False)  # soft: current text, nothing changes
        soft = await client.until(lambda m: m.get("finalize") is False)
        await client.reset(finalize=None)  # finalize absent means hard
        final_first = await client.final()
        await client.send_audio(second)  # a fresh utterance: nothing carries over
        await client.reset(kind="end")
        final_second = await client.final()
        await client.reset()  # hard reset with no audio: an empty final, still exactly one
        empty = await client.final()
        await client.close()
        return client.messages, soft, final_first, final_second, empty

    messages, soft, final_first, final_second, empty = run(scenario())
    assert soft["type"] == "transcript" and soft["is_final"] is True
    assert expected_first.startswith(soft["text"].rstrip())
    assert final_first["text"] == expected_first
    assert final_second["text"] == expected_second
    assert empty["text"] == ""
    interims = [m for m in messages if m.get("type") == "transcript" and not m["is_final"]]
    assert all(set(m) == {"type", "text", "is_final"} for m in interims)
    assert sum(1 for m in messages if m.get("finalize") is True) == 3


def test_back_to_back_hard_resets_each_get_one_final_in_order(server, offline):
    pcm = clip(1.7, 3)

    async def scenario():
        client = await ASRClient.open(server.ws_url)
        await client.send_audio(pcm)
        await client.reset()
        await client.reset()
        finals = [await client.final(), await client.final()]
        await client.close()
        return finals

    finals = run(scenario())
    assert [f["text"] for f in finals] == [offline(pcm), ""]


def test_concurrent_clients_get_their_own_transcripts(server, offline):
    pcms = [clip(1.1 + 0.6 * i, seed) for i, seed in enumerate((0, 3, 5))]
    expected = [offline(p) for p in pcms]
    assert len(set(expected)) == 3

    async def one(pcm):
        client = await ASRClient.open(server.ws_url)
        await client.send_audio(pcm, realtime=True)
        await client.reset()
        text = (await client.final())["text"]
        await client.close()
        return text

    async def together():
        return await asyncio.gather(*(one(p) for p in pcms))

    def steady_totals():
        steady = server.health()[1]["steps"]["steady"]
        return steady["steps"], steady["streams"]

    steps_before, streams_before = steady_totals()
    assert run(together()) == expected
    steps_after, streams_after = steady_totals()
    # this test's chunks (not the earlier single-stream tests') were batched into shared steps
    assert (streams_after - streams_before) / (steps_after - steps_before) > 1.0


def test_metrics_count_finals_audio_errors_and_steps(server):
    before = scrape(server.base)

    async def scenario():
        client = await ASRClient.open(server.ws_url)
        await client.ws.send("not json")
        await client.until(lambda m: m["type"] == "error")
        await client.send_audio(clip(1.0, 5))
        await client.reset()
        await client.final()
        during = scrape(server.base)
        await client.close()
        return during

    during = run(scenario())
    final_steps = ("nemotron_asr_steps_total", (("kind", "final"),))
    deadline = time.monotonic() + 5  # the engine process reports its step counters once a second
    while (after := scrape(server.base)).get(final_steps, 0) <= before.get(final_steps, 0):
        assert time.monotonic() < deadline, "the engine's step counters did not move"
        time.sleep(0.2)

    def grew(name, labels=(), by=1.0):
        return after[(name, labels)] - before.get((name, labels), 0.0) >= by

    assert grew("nemotron_asr_time_to_final_seconds_count")
    assert grew("nemotron_asr_audio_seconds_total", by=0.99)  # the 1.0 s clip
    assert grew("nemotron_asr_errors_total", (("kind", "bad_message"),))
    assert grew("nemotron_asr_steps_total", (("kind", "final"),))
    assert during[("nemotron_asr_sessions", ())] == 1
    assert after[("nemotron_asr_max_sessions", ())] == MAX_SESSIONS
    assert ("nemotron_asr_gpu_memory_reserved_bytes", ()) in after
    assert after[("nemotron_asr_step_phase_seconds_total", (("kind", "final"), ("phase", "encoder")))] > 0


def test_bad_input_gets_errors_and_the_session_survives(server, offline):
    pcm = clip(1.5, 3)

    async def scenario():
        client = await ASRClient.open(server.ws_url)
        await client.ws.send(pcm[:641])  # odd byte count: error, byte kept for the next frame
        odd = await client.until(lambda m: m["type"] == "error")
        await client.ws.send("this is not json")
        garbage = await client.until(lambda m: m["type"] == "error")
        await client.ws.send(json.dumps({"type": "pause"}))
        unknown = await client.until(lambda m: m["type"] == "error")
        await client.ws.send(b"\x00" * 64002)  # over --max-frame-bytes
        oversized = await client.until(lambda m: m["type"] == "error")
        await client.send_audio(pcm[641:])
        await client.reset()
        final = await client.final()
        await client.close()
        return odd, garbage, unknown, oversized, final

    odd, garbage, unknown, oversized, final = run(scenario())
    assert "16-bit" in odd["message"]
    assert "JSON" in garbage["message"]
    assert "unknown message type 'pause'" in unknown["message"]
    assert "exceeds the limit" in oversized["message"]
    assert final["text"] == offline(pcm)  # nothing lost, nothing duplicated


def test_session_limit_and_vanishing_clients_do_not_disturb_others(server, offline):
    pcm = clip(1.2, 0)

    async def scenario():
        survivor = await ASRClient.open(server.ws_url)
        leavers = [await ASRClient.open(server.ws_url) for _ in range(MAX_SESSIONS - 1)]
        extra = await connect(server.ws_url, proxy=None)
        error = json.loads(await asyncio.wait_for(extra.recv(), 10))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(extra.recv(), 10)
        for leaver in leavers:  # disappear mid-utterance without a reset
            await leaver.send_audio(pcm[: len(pcm) // 2])
            leaver.ws.transport.abort()
        await survivor.send_audio(pcm)
        await survivor.reset()
        text = (await survivor.final())["text"]
        await survivor.close()
        return error, closed.value.rcvd.code, text

    error, code, text = run(scenario())
    assert error["type"] == "error" and "too many sessions" in error["message"]
    assert code == 1013
    assert text == offline(pcm)
    deadline = time.monotonic() + 10
    while server.health()[1]["sessions"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.health()[1]["sessions"] == 0


def test_workers_share_the_port_the_session_limit_and_the_counts(server, offline):
    if server.setup != "workers":
        pytest.skip("one process serves the port")
    workers = [pid for pid in (server.process.pid, *spawned_children(server.process.pid))
               if tcp_sockets(pid, server.port)["listen"]]
    assert len(workers) == 2
    # The kernel spreads new connections over the processes listening (by each one's address).
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(16)]
    try:
        deadline = time.monotonic() + 10
        while sum(held := [tcp_sockets(pid, server.port)["established"] for pid in workers]) < 16:
            assert time.monotonic() < deadline, held
            time.sleep(0.05)
    finally:
        for connection in idle:
            connection.close()
    assert all(held), held
    pcm = clip(0.8, 5)
    deadline = time.monotonic() + 10  # the sessions of the tests before have all closed
    while server.health()[1]["sessions"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    async def scenario():
        # Every process admits against one count: the sessions past the limit are refused wherever
        # they land, and every process reports the same open sessions and metrics.
        clients = [await ASRClient.open(server.ws_url) for _ in range(MAX_SESSIONS)]
        refusals = []
        for _ in range(4):
            extra = await connect(server.ws_url, proxy=None)
            refusals.append(json.loads(await asyncio.wait_for(extra.recv(), 10)))
            await extra.close()
        sessions = {server.health()[1]["sessions"] for _ in range(12)}
        gauges = {scrape(server.base)[("nemotron_asr_sessions", ())] for _ in range(12)}
        texts = []
        for client in clients:
            await client.send_audio(pcm)
            await client.reset()
            texts.append((await client.final())["text"])
            await client.close()
        return refusals, sessions, gauges, texts

    finals_before = scrape(server.base)[("nemotron_asr_time_to_final_seconds_count", ())]
    refusals, sessions, gauges, texts = run(scenario())
    assert all("too many sessions" in refusal["message"] for refusal in refusals)
    assert sessions == {MAX_SESSIONS} and gauges == {MAX_SESSIONS}
    assert texts == [offline(pcm)] * MAX_SESSIONS
    counts = {scrape(server.base)[("nemotron_asr_time_to_final_seconds_count", ())] for _ in range(12)}
    assert counts == {finals_before + MAX_SESSIONS}


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_drains_open_sessions_with_their_final(tiny_asr_model, offline, workers):
    """Every process's open sessions get their final before the service exits; with workers the
    service process forwards SIGTERM to them (systemd signals it alone) and keeps the engine up for
    them."""
    proc = ServerProcess("nemotron_asr", ["--model", str(tiny_asr_model), "--max-sessions", "6",
                                          "--workers", str(workers)])
    proc.wait_ready()
    pcms = [clip(1.2 + 0.3 * i, 3 + i) for i in range(2 * workers)]

    async def one(pcm, started):
        client = await ASRClient.open(proc.ws_url)
        await client.send_audio(pcm)
        started.release()
        final = await client.final()
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive(timeout=15)
        return final["text"], closed.value.rcvd.code

    async def scenario():
        started = asyncio.Semaphore(0)
        clients = [asyncio.ensure_future(one(pcm, started)) for pcm in pcms]
        for _ in pcms:
            await started.acquire()
        await asyncio.sleep(0.3)
        proc.process.send_signal(signal.SIGTERM)
        return await asyncio.gather(*clients)

    try:
        served = spawned_children(proc.process.pid)
        results = run(scenario())
        assert proc.process.wait(30) == 0
    finally:
        proc.terminate()
    assert results == [(offline(pcm), 1001) for pcm in pcms]
    assert not [pid for pid in served if running(pid)]
    fields = proc.notify.fields()
    assert "STOPPING=1" in fields and fields.index("STOPPING=1") > fields.index("READY=1")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_dead_engine_process_fails_open_sessions_and_the_service(tiny_asr_model, workers):
    proc = ServerProcess("nemotron_asr", ["--model", str(tiny_asr_model), "--max-sessions", "8",
                                          "--workers", str(workers)])
    proc.wait_ready()

    async def failure(client):
        while True:  # interims may come first
            message = await client.receive(timeout=15)
            if message["type"] == "error":
                return message["message"]

    async def scenario():
        clients = [await ASRClient.open(proc.ws_url) for _ in range(4 * workers)]
        for client in clients:
            await client.send_audio(clip(0.5, 4))
        os.kill(engine_process_of(proc.process.pid, proc.port), signal.SIGKILL)
        return await asyncio.gather(*(failure(client) for client in clients))

    try:
        children = spawned_children(proc.process.pid)
        messages = run(scenario())
        code = proc.process.wait(30)
    finally:
        proc.terminate()
    assert all("speech recognition engine failed" in message for message in messages)
    if workers == 1:
        assert "exit code -9" in messages[0]
    assert code != 0
    assert "engine failed" in proc.log()
    deadline = time.monotonic() + 10  # no worker outlives the service
    while [pid for pid in children if running(pid)]:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_worker_that_dies_fails_the_service(tiny_asr_model):
    proc = ServerProcess("nemotron_asr", ["--model", str(tiny_asr_model), "--workers", "3"])
    proc.wait_ready()
    try:
        engine = engine_process_of(proc.process.pid, proc.port)
        workers = [pid for pid in spawned_children(proc.process.pid) if pid != engine]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        code = proc.process.wait(30)
    finally:
        proc.terminate()
    assert code != 0
    assert "worker-2 exited (exit code -9)" in proc.log() or "worker-3 exited (exit code -9)" in proc.log()
    deadline = time.monotonic() + 10
    while running(engine) or running(workers[1]):
        assert time.monotonic() < deadline
        time.sleep(0.1)
