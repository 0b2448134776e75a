"""Backend command lines, built from the configuration as lists (never strings glued by hand)."""

from __future__ import annotations

import sys

from .config import LLMConfig


def llamacpp(config: LLMConfig, model: str) -> list[str]:
    argv = [config.llama_server, "--model", model, "--host", config.host, "--port", str(config.port),
            "--n-gpu-layers", "999", "--ctx-size", str(config.ctx_size), "--flash-attn", "on",
            "--parallel", str(config.parallel), "--metrics"]
    if config.mode == "llamacpp-q4":
        argv += ["--cache-type-k", "q8_0", "--cache-type-v", "q8_0", "--cache-ram", "0",
                 "--reasoning-budget", "0"]
    return argv


def vllm(config: LLMConfig, model: str) -> list[str]:
    argv = [config.vllm_python or sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", model, "--served-model-name", config.served_model_name,
            "--host", config.host, "--port", str(config.port), "--dtype", config.dtype,
            "--trust-remote-code", "--gpu-memory-utilization", str(config.gpu_memory_utilization),
            "--max-num-seqs", str(config.parallel), "--max-model-len", str(config.ctx_size),
            "--enable-prefix-caching", "--reasoning-parser", "nemotron_v3",
            "--enable-auto-tool-choice", "--tool-call-parser", "qwen3_coder"]
    if config.kv_cache == "fp8":
        argv += ["--kv-cache-dtype", "fp8", "--mamba-ssm-cache-dtype", "float32"]
    return argv


def command(config: LLMConfig, model: str) -> list[str]:
    return vllm(config, model) if config.backend == "vllm" else llamacpp(config, model)
