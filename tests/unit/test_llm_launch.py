import os
import subprocess
import sys
from pathlib import Path

import pytest
from nemotron_common.access import read_api_key
from nemotron_llm import engine, loading
from nemotron_llm.config import LLMConfig
from nemotron_llm.service import line_level


def test_llamacpp_q8_command_line():
    argv = engine.command(LLMConfig(mode="llamacpp-q8", port=8000), "/m/q8.gguf")
    assert argv[:3] == ["llama-server", "--model", "/m/q8.gguf"]
    joined = " ".join(argv)
    for part in ("--host 127.0.0.1", "--port 8000", "--n-gpu-layers 999", "--ctx-size 16384",
                 "--flash-attn on", "--parallel 1", "--metrics", "--alias nemotron",
                 "--cache-ram 0",  # no idle-slot copies into a host-RAM cache before each request
                 "--ctx-checkpoints 4"):
        assert part in joined
    assert "--cache-type-k" not in joined
    assert "--kv-unified" not in joined  # one slot: nothing to share


def test_llamacpp_slots_share_one_kv_buffer_each_held_to_its_share():
    joined = " ".join(engine.command(LLMConfig(mode="llamacpp-q8", ctx_size=122880, parallel=20), "/m.gguf"))
    assert "--parallel 20 " in joined and "--kv-unified --kv-unified-per-slot 6144" in joined


def test_llamacpp_q4_adds_the_recipe_extras():
    joined = " ".join(engine.command(LLMConfig(mode="llamacpp-q4"), "/m/q4.gguf"))
    for part in ("--cache-type-k q8_0", "--cache-type-v q8_0", "--cache-ram 0", "--reasoning-budget 0"):
        assert part in joined


def test_vllm_command_line_and_fp8_variant():
    config = LLMConfig(mode="vllm", kv_cache="fp8", ctx_size=16384, parallel=2)
    argv = engine.command(config, "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16")
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    joined = " ".join(argv)
    for part in ("--served-model-name nemotron", "--dtype bfloat16", "--allowed-origins []",
                 "--gpu-memory-utilization 0.6", "--max-num-seqs 2", "--max-model-len 16384",
                 "--enable-prefix-caching", "--reasoning-parser nemotron_v3",
                 "--tool-call-parser qwen3_coder",
                 "--kv-cache-dtype fp8", "--mamba-ssm-cache-dtype float32"):
        assert part in joined
    assert "--trust-remote-code" not in argv and "--api-key" not in joined


def test_access_settings_reach_the_backends_without_the_key_on_argv(tmp_path):
    key = tmp_path / "api-key"
    key.write_text("s3cret\n")
    config = LLMConfig(mode="llamacpp-q8", allowed_origins="https://a.example")
    argv = engine.command(config, "/m/q8.gguf", key)
    assert argv[argv.index("--api-key-file") + 1] == str(key) and "s3cret" not in argv
    assert argv[argv.index("--cors-origins") + 1] == "https://a.example"
    assert engine.environment(config, read_api_key(str(key))) == {}
    plain = engine.command(LLMConfig(), "/m/q8.gguf")
    assert plain[plain.index("--cors-origins") + 1] == ""  # CORS off
    vllm = LLMConfig(mode="vllm", trust_remote_code=True, allowed_origins="https://a.example, *")
    argv = engine.command(vllm, "m", key)
    assert "--trust-remote-code" in argv and "s3cret" not in " ".join(argv)
    assert argv[argv.index("--allowed-origins") + 1] == '["*", "https://a.example"]'
    assert engine.environment(vllm, read_api_key(str(key))) == {"VLLM_API_KEY": "s3cret"}


VLLM_PYTHON = os.environ.get("NEMOTRON_TEST_VLLM_PYTHON")
PARSE = Path(__file__).resolve().parents[1] / "helpers" / "vllm_parse.py"


@pytest.mark.skipif(not VLLM_PYTHON, reason="NEMOTRON_TEST_VLLM_PYTHON (a Python with vLLM) not set")
@pytest.mark.parametrize("kv_cache", ["auto", "fp8"])
def test_vllm_accepts_the_command_line(kv_cache):
    """The pinned vLLM's own parser (vllm==0.33.0 on CPU, see tests/run) accepts what we build."""
    model = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"
    argv = engine.command(LLMConfig(mode="vllm", kv_cache=kv_cache, trust_remote_code=kv_cache == "fp8",
                                      allowed_origins="https://a.example"), model)

    def parse(*extra):
        return subprocess.run([VLLM_PYTHON, str(PARSE), *argv[3:], *extra], capture_output=True, text=True,
                              timeout=300, env={**os.environ, "VLLM_TARGET_DEVICE": "cpu"})

    result = parse()
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"accepted {model} ['nemotron'] {kv_cache}" in result.stdout
    if kv_cache == "fp8":  # and the check can fail: vLLM rejects what it does not know
        rejected = parse("--no-such-flag")
        assert rejected.returncode != 0 and "--no-such-flag" in rejected.stderr


def fake_cache(tmp_path, repo, files):
    snapshot = tmp_path / f"models--{repo.replace('/', '--')}" / "snapshots" / "rev1"
    snapshot.mkdir(parents=True)
    for name in files:
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).write_bytes(b"GGUF")
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("rev1")
    return snapshot


def test_models_found_in_the_cache_including_split_files(tmp_path):
    snapshot = fake_cache(tmp_path, "unsloth/Nemotron-3-Nano-30B-A3B-GGUF", [
        "Nemotron-3-Nano-30B-A3B-Q8_0.gguf",
        "Q4_K_M/Nemotron-3-Nano-30B-A3B-Q4_K_M-00002-of-00002.gguf",
        "Q4_K_M/Nemotron-3-Nano-30B-A3B-Q4_K_M-00001-of-00002.gguf"])
    q8 = loading.resolve(LLMConfig(mode="llamacpp-q8", hf_cache=str(tmp_path)))
    q4 = loading.resolve(LLMConfig(mode="llamacpp-q4", hf_cache=str(tmp_path)))
    assert q8 == str(snapshot / "Nemotron-3-Nano-30B-A3B-Q8_0.gguf")
    assert q4.endswith("Q4_K_M-00001-of-00002.gguf")


def test_explicit_model_wins_and_errors_name_the_file(tmp_path):
    fake_cache(tmp_path, "unsloth/x", ["x-Q8_0.gguf"])
    explicit = tmp_path / "mine.gguf"
    explicit.write_bytes(b"GGUF")
    assert loading.resolve(LLMConfig(model=str(explicit), hf_cache=str(tmp_path))) == str(explicit)
    with pytest.raises(loading.ModelError, match="absent.gguf does not exist"):
        loading.resolve(LLMConfig(model=str(tmp_path / "absent.gguf")))
    with pytest.raises(loading.ModelError, match=r"no \*Q4_K_M\*.gguf model found"):
        loading.resolve(LLMConfig(mode="llamacpp-q4", hf_cache=str(tmp_path)))
    with pytest.raises(loading.ModelError, match="vllm mode needs model"):
        loading.resolve(LLMConfig(mode="vllm"))
    with pytest.raises(loading.ModelError, match="not in the Hugging Face cache"):
        loading.resolve(LLMConfig(mode="vllm", model="nvidia/absent", hf_cache=str(tmp_path)))


def test_vllm_model_id_resolves_to_its_snapshot(tmp_path):
    snapshot = fake_cache(tmp_path, "nvidia/tiny", ["config.json"])
    config = LLMConfig(mode="vllm", model="nvidia/tiny", hf_cache=str(tmp_path))
    assert loading.resolve(config) == str(snapshot)


def test_backend_log_levels():
    assert line_level("0.00.005.966 W srv  llama_server: CORS") == "WARNING"
    assert line_level("0.00.007.435 E srv  load_model: failed") == "ERROR"
    assert line_level("INFO 11-26 22:00:01 [api_server.py:1] vLLM API server") == "INFO"
    assert line_level("(EngineCore pid=9) ERROR 11-26 engine died") == "ERROR"
    assert line_level("plain text") == "INFO"


def test_cli_print_command_and_config_errors(tmp_path):
    model = tmp_path / "m-Q8_0.gguf"
    model.write_bytes(b"GGUF")
    def run(*args):
        return subprocess.run([sys.executable, "-m", "nemotron_llm", *args], capture_output=True, text=True,
                              timeout=60)
    ok = run("--model", str(model), "--print-command")
    assert ok.returncode == 0 and ok.stdout.startswith("llama-server --model ")
    missing = run("--model", str(tmp_path / "none.gguf"))
    assert missing.returncode == 78 and "none.gguf does not exist" in missing.stderr
    bad = run("--model", str(model), "--mode", "llamacpp-q2")
    assert bad.returncode == 78 and "mode = 'llamacpp-q2'" in bad.stderr
