"""The lock file: pinned sources, wheels and build flags, as data (``lock.toml`` by default)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LOCK = Path(__file__).with_name("lock.toml")
_COMMIT_LENGTH = 40


class LockError(ValueError):
    pass


@dataclass(frozen=True)
class Source:
    repo: str
    commit: str
    build_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Lock:
    path: Path
    python: str
    torch_wheels: list[str]
    torch_index: str
    sources: dict[str, Source]  # torch, torchaudio, nemo, vllm, llama_cpp
    nemo_spec: str
    llama_cmake_flags: list[str]
    llama_targets: list[str]
    models: dict[str, object]
    system_packages: list[str]


def _table(data: dict, name: str) -> dict:
    value = data.get(name)
    if not isinstance(value, dict):
        raise LockError(f"[{name}] is missing")
    return value


def _source(data: dict, name: str) -> Source:
    table = _table(data, name)
    repo, commit = table.get("repo"), table.get("commit")
    if not isinstance(repo, str) or not repo:
        raise LockError(f"[{name}] repo is missing")
    if not (isinstance(commit, str) and len(commit) == _COMMIT_LENGTH
            and all(c in "0123456789abcdef" for c in commit)):
        raise LockError(f"[{name}] commit must be a full 40-digit hex commit, got {commit!r}")
    env = table.get("build_env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise LockError(f"[{name}] build_env must map names to strings")
    return Source(repo, commit, dict(env))


def load_lock(path: Path = DEFAULT_LOCK) -> Lock:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise LockError(f"cannot read lock file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"lock file {path} is not valid TOML: {exc}") from None
    torch = _table(data, "torch")
    llama = _table(data, "llama_cpp")
    return Lock(
        path=path,
        python=str(_table(data, "python").get("version", "3.12")),
        torch_wheels=list(torch.get("wheels", [])),
        torch_index=str(torch.get("index", "")),
        sources={name: _source(data, name) for name in ("torch", "torchaudio", "nemo", "vllm", "llama_cpp")},
        nemo_spec=str(_table(data, "nemo").get("spec", "nemo_toolkit[asr,tts]")),
        llama_cmake_flags=list(llama.get("cmake_flags", [])),
        llama_targets=list(llama.get("targets", ["llama-server"])),
        models=_table(data, "models"),
        system_packages=list(_table(data, "system").get("packages", [])),
    )
