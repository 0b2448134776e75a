"""Settings of ``nemotron-llm`` (the ``[llm]`` table of nemotron.toml, ``NEMOTRON_LLM_*``, flags)."""

from __future__ import annotations

from dataclasses import dataclass

from nemotron_common import ports
from nemotron_common.config import port_number, positive, setting

MODES = ("llamacpp-q8", "llamacpp-q4", "vllm")


@dataclass
class LLMConfig:
    mode: str = setting("llamacpp-q8", "backend and weights", choices=MODES)
    model: str = setting("", "GGUF file, model directory or Hugging Face id; empty: find one in hf_cache")
    hf_cache: str = setting("", "Hugging Face hub cache to search (default: HF_HUB_CACHE)")
    host: str = setting("127.0.0.1", "address the backend binds")
    port: int = setting(ports.LLM, "port the backend serves", check=port_number)
    api_key_file: str = setting("", "file with the API key clients must send as Authorization: Bearer "
                                "(default: the unit's api-key credential, if it loads one; else none)")
    allowed_origins: str = setting("", "browser origins allowed by CORS (comma-separated, * for any; "
                                   "llama.cpp takes one origin or *); empty: none")
    trust_remote_code: bool = setting(False, "vLLM: run Python code shipped with the model (only for a "
                                      "model vLLM cannot load natively; Nemotron-3-Nano needs none)")
    ctx_size: int = setting(16384, "context length (llama.cpp --ctx-size, vLLM --max-model-len)",
                            check=positive)
    parallel: int = setting(1, "concurrent sequences (llama.cpp --parallel, vLLM --max-num-seqs)",
                            check=positive)
    ctx_checkpoints: int = setting(4, "llama.cpp: recurrent-state checkpoints kept per slot "
                                   "(--ctx-checkpoints), so a turn whose history differs in the last reply "
                                   "resumes from the last prompt; each holds the model's Mamba state (about "
                                   "48 MiB for Nemotron-3-Nano) in host memory; 0: none",
                                   check=lambda v: None if v >= 0 else "must be 0 or more")
    llama_server: str = setting("llama-server", "llama.cpp server binary")
    vllm_python: str = setting("", "Python that has vLLM installed (default: this one)")
    served_model_name: str = setting("nemotron", "model name clients use (vLLM --served-model-name, "
                                     "llama.cpp --alias)")
    dtype: str = setting("bfloat16", "vLLM weights dtype", choices=("auto", "bfloat16", "float16"))
    kv_cache: str = setting("auto", "vLLM KV cache dtype (fp8 also keeps the Mamba state in float32)",
                            choices=("auto", "fp8"))
    gpu_memory_utilization: float = setting(0.60, "vLLM share of GPU memory (leave room for ASR/TTS)",
                                            check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]")
    start_timeout: float = setting(900.0, "seconds the backend may take to answer /health 200",
                                   check=positive)
    health_interval: float = setting(5.0, "seconds between health probes once ready", check=positive)
    health_failures: int = setting(3, "failed probes in a row that count as a dead backend", check=positive)
    stop_timeout: float = setting(60.0, "seconds the backend gets after SIGTERM before SIGKILL",
                                  check=positive)
    log_level: str = setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    @property
    def backend(self) -> str:
        return "vllm" if self.mode == "vllm" else "llamacpp"
