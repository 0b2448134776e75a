"""The LLM's engine is a backend process, llama.cpp's ``llama-server`` or vLLM, which serves the port
itself (so this server has no protocol, session or transport module of its own): its command lines,
built from the configuration as lists (never strings glued by hand), and its environment."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nemotron_common.access import parse_origins

from .config import LLMConfig


def llamacpp(config: LLMConfig, model: str, key_file: Path | None = None) -> list[str]:
    # CORS: llama-server allows every origin ("*") unless told otherwise; an empty list allows none.
    argv = [config.llama_server, "--model", model, "--host", config.host, "--port", str(config.port),
            "--n-gpu-layers", "999", "--ctx-size", str(config.ctx_size), "--flash-attn", "on",
            "--parallel", str(config.parallel), "--metrics", "--alias", config.served_model_name,
            "--cors-origins", ",".join(sorted(parse_origins(config.allowed_origins))),
            # No host-RAM prompt cache: with it, llama-server copies every idle slot into that cache
            # whenever a request arrives, one slot after another before the request starts, which
            # delayed first tokens on the voice bench (bench/results/voice-h200-run2.md), and it holds
            # up to 8 GiB of host memory, which is GPU memory on a Spark. The bots keep each
            # conversation in its own slot, whose context stays on the GPU, so the copy buys nothing.
            "--cache-ram", "0",
            # A hybrid model's Mamba state only continues from exactly the tokens it has seen; when a
            # turn's history differs from them (a reply cut short by the user, a reply whose text
            # tokenizes differently), llama-server resumes from a checkpoint of that state. A turn
            # makes one or two; the next turn needs the last. llama.cpp keeps 32 per slot, in host
            # memory (a Spark's GPU memory): 1.5 GiB a slot for Nemotron-3-Nano.
            "--ctx-checkpoints", str(config.ctx_checkpoints)]
    if config.parallel > 1:
        # One KV buffer for every slot, each slot still held to its share of the context. With a
        # buffer per slot, llama.cpp puts only consecutively numbered slots of a hybrid (Mamba)
        # model like Nemotron-3-Nano into one forward pass, so conversations on scattered slots
        # cost a pass each, every step: decoding on slots 0, 2, 4, 6 ran at about 60 % of slots
        # 0-3 (bench/results/llama-cpp-kv-unified-cpu.md).
        argv += ["--kv-unified", "--kv-unified-per-slot", str(config.ctx_size // config.parallel)]
    if key_file is not None:
        argv += ["--api-key-file", str(key_file)]  # read by llama-server itself: never on argv
    if config.mode == "llamacpp-q4":
        argv += ["--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--reasoning-budget", "0"]
    return argv


def vllm(config: LLMConfig, model: str) -> list[str]:
    argv = [config.vllm_python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model, "--served-model-name", config.served_model_name,
            "--host", config.host, "--port", str(config.port), "--dtype", config.dtype,
            "--allowed-origins", json.dumps(sorted(parse_origins(config.allowed_origins))),
            "--gpu-memory-utilization", str(config.gpu_memory_utilization),
            "--max-num-seqs", str(config.parallel), "--max-model-len", str(config.ctx_size),
            "--enable-prefix-caching", "--reasoning-parser", "nemotron_v3",
            "--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder"]
    if config.kv_cache == "fp8":
        argv += ["--kv-cache-dtype", "fp8", "--mamba-ssm-cache-dtype", "float32"]
    if config.trust_remote_code:
        argv.append("--trust-remote-code")
    return argv


def command(config: LLMConfig, model: str, key_file: Path | None = None) -> list[str]:
    return vllm(config, model) if config.backend == "vllm" else llamacpp(config, model, key_file)


def environment(config: LLMConfig, key: str | None = None) -> dict[str, str]:
    """Variables the backend needs beyond the service's own: vLLM takes its key from VLLM_API_KEY
    (its process environment is readable by root and the service user only, unlike argv)."""
    if config.backend == "vllm" and key is not None:
        return {"VLLM_API_KEY": key}
    return {}
