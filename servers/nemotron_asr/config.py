"""Settings of ``nemotron-asr`` (the ``[asr]`` table of nemotron.toml, ``NEMOTRON_ASR_*``, flags)."""

from __future__ import annotations

from dataclasses import dataclass

from nemotron_common import ports
from nemotron_common.config import port_number, positive, setting

RIGHT_CONTEXT_MS = {0: 80, 1: 160, 6: 560, 13: 1120}


@dataclass
class ASRConfig:
    model: str = setting("", "path to a .nemo file, or a Hugging Face id found in the local cache")
    hf_cache: str = setting("", "Hugging Face hub cache to look up model ids in (default: HF_HUB_CACHE)")
    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(ports.ASR, "TCP port for the WebSocket, HTTP endpoints and /health",
                        check=port_number)
    api_key_file: str = setting("", "file with the API key clients must send as Authorization: Bearer "
                                "(default: the unit's api-key credential, if it loads one; else none)")
    allowed_origins: str = setting("", "browser origins (scheme://host:port, comma-separated, * for any) "
                                   "allowed to connect; requests without an Origin are not browsers")
    right_context: int = setting(1, "encoder right context: 0/1/6/13 = 80/160/560/1120 ms chunks",
                                 choices=tuple(RIGHT_CONTEXT_MS))
    device: str = setting("auto", "torch device: auto, cpu, cuda or cuda:N")
    dtype: str = setting("auto", "encoder precision (auto = bfloat16 on CUDA, float32 on CPU)",
                         choices=("auto", "float32", "bfloat16", "float16"))
    cuda_graphs: bool = setting(True, "replay encoder steps from CUDA graphs (CUDA only)")
    engine_host: str = setting("process", "where the model runs: a process of its own (the event loop's "
                               "per-frame work never holds its GIL) or a thread of the server's",
                               choices=("process", "thread"))
    workers: int = setting(1, "processes serving the port, each with its own event loop and pipe to the "
                           "engine process: more carry the messages of many streams ending at once "
                           "(needs engine_host = process)", check=positive)
    cpu_threads: int = setting(0, "torch intra-op threads (0 = 1 on a GPU, the usable cores on the CPU)")
    # A voice-agent host serves a few conversations at once, and GPU memory follows these two (on a
    # DGX Spark, memory the LLM shares): 64 fits a Spark next to the LLM; a GPU of its own takes 512.
    max_sessions: int = setting(64, "concurrent streams; more are refused with an error",
                                check=positive)
    max_batch: int = setting(64, "most streams in one batched step", check=positive)
    max_frame_bytes: int = setting(1_048_576, "largest binary audio frame accepted", check=positive)
    max_upload_mb: int = setting(25, "largest audio file POST /v1/audio/transcriptions takes, in MiB",
                                 check=positive)
    drain_timeout: float = setting(10.0, "seconds open sessions get to finish on shutdown",
                                   check=positive)
    warmup_streams: int = setting(0, "streams in the warmup step (0 = max_batch, to claim peak memory)")
    step_timing: bool = setting(False, "exact per-phase step times in /health (adds GPU syncs)")
    log_level: str = setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def check(self) -> str | None:
        if not self.model:
            return "model is not set: give a .nemo path or a Hugging Face id"
        if self.workers > 1 and self.engine_host != "process":
            return f"workers = {self.workers} needs engine_host = \"process\" (they share its engine)"
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            return f"device = {self.device!r}: must be auto, cpu, cuda or cuda:N"
        return None

