"""Settings of ``nemotron-asr`` (the ``[asr]`` table of nemotron.toml, ``NEMOTRON_ASR_*``, flags)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nemotron_common.config import port_number, positive, setting

RIGHT_CONTEXT_MS = {0: 80, 1: 160, 6: 560, 13: 1120}


@dataclass
class ASRConfig:
    model: str = setting("", "path to a .nemo file, or a Hugging Face id found in the local cache")
    hf_cache: str = setting("", "Hugging Face hub cache to look up model ids in (default: HF_HUB_CACHE)")
    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(8080, "TCP port for the WebSocket and /health", check=port_number)
    right_context: int = setting(1, "encoder right context: 0/1/6/13 = 80/160/560/1120 ms chunks",
                                 choices=tuple(RIGHT_CONTEXT_MS))
    device: str = setting("auto", "torch device: auto, cpu, cuda or cuda:N")
    dtype: str = setting("auto", "encoder precision (auto = bfloat16 on CUDA, float32 on CPU)",
                         choices=("auto", "float32", "bfloat16", "float16"))
    cuda_graphs: bool = setting(True, "replay encoder steps from CUDA graphs (CUDA only)")
    max_sessions: int = setting(512, "concurrent streams; more are refused with an error",
                                check=positive)
    max_batch: int = setting(512, "most streams in one batched step", check=positive)
    max_frame_bytes: int = setting(1_048_576, "largest binary audio frame accepted", check=positive)
    drain_timeout: float = setting(10.0, "seconds open sessions get to finish on shutdown",
                                   check=positive)
    warmup_streams: int = setting(0, "streams in the warmup step (0 = max_batch, to claim peak memory)")
    step_timing: bool = setting(False, "exact per-phase step times in /health (adds GPU syncs)")
    log_level: str = setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def check(self) -> str | None:
        if not self.model:
            return "model is not set: give a .nemo path or a Hugging Face id"
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            return f"device = {self.device!r}: must be auto, cpu, cuda or cuda:N"
        return None


def resolve_model(config: ASRConfig) -> Path:
    """The .nemo file to load; raises ValueError with the reason when there is none."""
    path = Path(config.model).expanduser()
    if path.suffix == ".nemo" or path.is_absolute() or path.exists():
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ValueError(f"model file {path} cannot be read: {exc.strerror}") from None
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(config.model, cache_dir=config.hf_cache or None,
                                          local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        raise ValueError(f"model {config.model} is not in the local Hugging Face cache "
                         f"({config.hf_cache or 'default cache'}); download it first") from None
    found = sorted(snapshot.glob("*.nemo"))
    if not found:
        raise ValueError(f"model {config.model} in the Hugging Face cache has no .nemo file")
    return found[0]
