"""nemotron-llm supervising a real llama-server (CPU build) with a tiny GGUF."""

import json
import os
import platform
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from helpers.binaries import llama_server
from helpers.gguf_model import write
from helpers.process import ServerProcess, get_json

pytestmark = pytest.mark.slow
LLAMA_SERVER = llama_server()
PROMPT = "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    return write(tmp_path_factory.mktemp("llm") / "tiny-Q8_0.gguf")


def start(gguf, *extra):
    proc = ServerProcess("nemotron_llm", ["--model", str(gguf), "--llama-server", LLAMA_SERVER,
                                          "--ctx-size", "1024", "--parallel", "2", "--health-interval", "0.5",
                                          "--stop-timeout", "10", *extra])
    assert proc.notify.wait_for("READY=1", timeout=60, process=proc.process), proc.log()
    return proc


def post(proc, path, body, timeout=30):
    request = urllib.request.Request(proc.base + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)


def backend_pid(proc) -> int:
    children = Path(f"/proc/{proc.process.pid}/task/{proc.process.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


@pytest.fixture(scope="module")
def llm(gguf):
    proc = start(gguf)
    yield proc
    proc.terminate()


def test_slots_share_one_kv_buffer_each_held_to_its_share(llm):
    props = json.load(urllib.request.urlopen(llm.base + "/props", timeout=10))
    assert props["default_generation_settings"]["n_ctx"] == 512  # 1024 tokens for 2 slots
    assert "kv_unified = 'true'" in llm.log()


def test_ready_only_once_health_is_200(llm):
    fields = llm.notify.fields()
    assert any(f.startswith("STATUS=loading llamacpp-q8") for f in fields[:fields.index("READY=1")])
    assert llm.health()[0] == 200


def test_bot_requests(llm):
    body = {"prompt": PROMPT, "n_predict": 8, "id_slot": 0, "cache_prompt": True, "temperature": 0,
            "ignore_eos": True, "stop": ["<|im_end|>"]}
    result = json.loads(post(llm, "/completion", body).read())
    assert result["tokens_predicted"] == 8 and result["id_slot"] == 0 and result["content"].strip()
    with post(llm, "/completion", {**body, "stream": True}) as stream:
        lines = stream.read().decode().splitlines()
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
    assert len(events) >= 8 and events[-1]["stop"] is True
    chat = json.loads(post(llm, "/v1/chat/completions", {
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}).read())
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert get_json(llm.base + "/v1/models")[1]["data"][0]["id"] == "nemotron"  # one name in both modes
    props = get_json(llm.base + "/props")[1]
    assert props["default_generation_settings"]["n_ctx"] > 0 and props["total_slots"] == 2
    assert len(get_json(llm.base + "/slots")[1]) == 2
    with urllib.request.urlopen(llm.base + "/metrics", timeout=5) as metrics:
        assert b"llamacpp:" in metrics.read()


@pytest.fixture(scope="module")
def hybrid_gguf(tmp_path_factory):
    """Nemotron-3-Nano's layer mix (Mamba-2, attention, experts) at a tiny size."""
    from random_models.llm import write as write_nemotron_h

    return write_nemotron_h(tmp_path_factory.mktemp("hybrid") / "tiny-nemotron-h-moe-Q8_0.gguf", "tiny")


@pytest.mark.parametrize("checkpoints", [2, 0])
def test_a_turn_after_an_interrupted_reply_resumes_from_a_state_checkpoint(hybrid_gguf, checkpoints):
    """A bot sends each turn as the conversation so far; after the user interrupts a reply, its
    history keeps only what was spoken, so a hybrid model's Mamba state (at the end of the whole
    reply) cannot continue. With the checkpoints this service keeps, llama-server resumes from one at
    the end of the last prompt; with none, it processes the whole conversation again."""
    proc = start(hybrid_gguf, "--ctx-checkpoints", str(checkpoints))
    try:
        history = "<|im_start|>system\nYou are a helpful voice assistant.<|im_end|>\n"
        prompts, reused = [], []
        for turn in range(3):
            prompt = f"{history}<|im_start|>user\nhello, turn {turn}<|im_end|>\n<|im_start|>assistant\n"
            body = {"prompt": prompt, "n_predict": 8, "id_slot": 0, "cache_prompt": True, "temperature": 0,
                    "ignore_eos": True}
            result = json.loads(post(proc, "/completion", body, timeout=120).read())
            prompts.append(result["tokens_evaluated"])
            reused.append(result["tokens_evaluated"] - result["timings"]["prompt_n"])
            spoken = result["content"][:len(result["content"]) // 2]
            history = f"{prompt}{spoken}<|im_end|>\n"
    finally:
        proc.terminate()
    assert f"--ctx-checkpoints {checkpoints}" in proc.log()
    if checkpoints:
        # the last prompt but for the few tokens of its last batch, which follow the checkpoint
        assert all(reused[t] >= prompts[t - 1] - 8 for t in (1, 2)), (prompts, reused)
    else:
        assert reused[1:] == [0, 0], reused


def test_the_api_key_guards_everything_but_health(gguf, tmp_path):
    """The key reaches llama-server as a file (the systemd credential), never on its command line."""
    (tmp_path / "api-key").write_text("llm-k3y\n")
    proc = ServerProcess("nemotron_llm", ["--model", str(gguf), "--llama-server", LLAMA_SERVER,
                                          "--ctx-size", "512", "--parallel", "1", "--stop-timeout", "10"],
                         env={"CREDENTIALS_DIRECTORY": str(tmp_path)})
    try:
        assert proc.notify.wait_for("READY=1", timeout=60, process=proc.process), proc.log()
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        with pytest.raises(urllib.error.HTTPError) as refused:
            post(proc, "/v1/chat/completions", chat)
        assert refused.value.code == 401
        headers = {"Content-Type": "application/json", "Authorization": "Bearer llm-k3y",
                   "Origin": "http://evil.example"}
        request = urllib.request.Request(proc.base + "/v1/chat/completions", json.dumps(chat).encode(),
                                         headers)
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
            assert answer.headers.get("Access-Control-Allow-Origin", "") in ("", None)  # CORS off
        assert proc.health()[0] == 200
        assert "llm-k3y" not in Path(f"/proc/{backend_pid(proc)}/cmdline").read_text()
    finally:
        proc.terminate()


def test_the_openai_client_reaches_the_model_by_its_served_name(llm):
    import openai

    client = openai.OpenAI(base_url=llm.base + "/v1", api_key="not-needed")
    assert [m.id for m in client.models.list()] == ["nemotron"]
    chat = client.chat.completions.create(model="nemotron", max_tokens=4,
                                          messages=[{"role": "user", "content": "hi"}])
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens > 0


def test_cancelled_streams_and_immediate_slot_reuse_leave_the_server_up(llm):
    body = {"prompt": PROMPT, "n_predict": 64, "id_slot": 1, "cache_prompt": True, "temperature": 0,
            "ignore_eos": True, "stream": True}
    for _ in range(30):
        with post(llm, "/completion", body) as stream:
            stream.readline()  # first event, then drop the connection mid-generation
    result = json.loads(post(llm, "/completion", {**body, "stream": False, "n_predict": 4}).read())
    assert result["tokens_predicted"] == 4
    assert llm.health()[0] == 200 and llm.process.poll() is None


def test_sigterm_stops_backend_and_service_cleanly(gguf):
    proc = start(gguf)
    pid = backend_pid(proc)
    assert proc.terminate(timeout=30) == 0
    assert not Path(f"/proc/{pid}").exists()
    assert "STOPPING=1" in proc.notify.fields()


def test_killed_backend_makes_the_service_exit_non_zero(gguf):
    proc = start(gguf)
    os.kill(backend_pid(proc), signal.SIGKILL)
    try:
        assert proc.process.wait(30) == 1
    finally:
        proc.terminate()
    assert "backend exited with -9" in proc.log()


def test_backend_that_stops_answering_makes_the_service_exit_non_zero(gguf):
    proc = start(gguf, "--health-failures", "2", "--stop-timeout", "2")
    pid = backend_pid(proc)
    os.kill(pid, signal.SIGSTOP)  # alive but silent, like a wedged engine
    try:
        assert proc.process.wait(40) == 1
    finally:
        proc.terminate()
    assert "backend stopped answering" in proc.log()
    assert not Path(f"/proc/{pid}").exists()  # killed with its process group, not left behind


def test_backend_that_never_gets_ready_times_out(tmp_path):
    script = tmp_path / "never-ready"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    model = tmp_path / "m-Q8_0.gguf"
    model.write_bytes(b"GGUF")
    proc = ServerProcess("nemotron_llm", ["--model", str(model), "--llama-server", str(script),
                                          "--start-timeout", "2", "--stop-timeout", "2"])
    started = time.monotonic()
    assert proc.process.wait(30) == 1
    assert time.monotonic() - started < 20
    assert "did not answer /health 200 within 2 s" in proc.log()
    assert "READY=1" not in proc.notify.fields()
    proc.terminate()


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x86-64 baseline is what this checks")
def test_the_test_build_runs_on_any_x86_64_machine():
    """No AVX, AVX2 or AVX-512 instruction anywhere in the binary: a CI machine without them (an EPYC
    with AVX2 only, say) runs it, where a prebuilt binary for newer CPUs died with SIGILL."""
    listing = subprocess.run(["objdump", "-d", "--no-show-raw-insn", LLAMA_SERVER], capture_output=True,
                             text=True, check=True).stdout
    assert "llama_decode" in listing  # the disassembly is really there
    wide = [line for line in listing.splitlines() if "%ymm" in line or "%zmm" in line or "%k1" in line]
    assert wide == [], wide[:5]


def test_a_backend_that_cannot_start_is_a_bad_setting(tmp_path):
    """Exit 78: systemd does not restart a service in a loop for a binary that cannot run."""
    model = tmp_path / "m-Q8_0.gguf"
    model.write_bytes(b"GGUF")
    not_a_program = tmp_path / "llama-server"
    not_a_program.write_text("not a program\n")
    not_a_program.chmod(0o755)
    proc = ServerProcess("nemotron_llm", ["--model", str(model), "--llama-server", str(not_a_program)])
    assert proc.process.wait(30) == 78
    assert "cannot start backend" in proc.log() and "READY=1" not in proc.notify.fields()
    proc.terminate()
