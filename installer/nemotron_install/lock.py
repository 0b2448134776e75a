"""The lock file (``lock.toml`` by default): which requirement locks each venv installs, and what is
built from source, with its checksum and build flags."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_LOCK = Path(__file__).with_name("lock.toml")
VENVS = ("stack", "vllm", "test")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class LockError(ValueError):
    pass


@dataclass(frozen=True)
class TorchSource:
    version: str
    repo: str
    ref: str
    build_env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LlamaCpp:
    sdist: str  # name==version on PyPI
    url: str
    sha256: str
    subdir: str
    cmake_flags: list[str]
    cuda_flags: list[str]
    cpu_flags: dict[str, list[str]]  # per CPU architecture (uname -m)
    targets: list[str]


@dataclass(frozen=True)
class Lock:
    path: Path
    python: str
    requirements: dict[str, str]  # venv -> file pattern with {variant} and {machine}
    torch: TorchSource
    llama_cpp: LlamaCpp
    models: dict[str, object]
    packages: list[str]  # apt packages, "{python}" standing for the Python version

    def requirements_file(self, venv: str, variant: str, machine: str) -> Path:
        """locks/stack-gpu-aarch64.txt and the like; LockError when this lock has none for it."""
        path = self.path.parent / self.requirements[venv].format(variant=variant, machine=machine)
        if not path.is_file():
            raise LockError(f"no {venv} lock for {variant} on {machine} ({path.name} is missing)")
        return path

    def system_packages(self, python: str) -> list[str]:
        return [p.replace("{python}", python) for p in self.packages]


def _table(data: dict, name: str) -> dict:
    value = data.get(name)
    if not isinstance(value, dict):
        raise LockError(f"[{name}] is missing")
    return value


def _strings(table: dict, name: str, key: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LockError(f"[{name}] {key} must be a list of strings")
    return list(value)


def _string(table: dict, name: str, key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise LockError(f"[{name}] {key} is missing")
    return value


def _llama_cpp(data: dict) -> LlamaCpp:
    table = _table(data, "llama_cpp")
    sha256 = _string(table, "llama_cpp", "sha256")
    if not _SHA256.fullmatch(sha256):
        raise LockError(f"[llama_cpp] sha256 must be 64 hex digits, got {sha256!r}")
    cpu = table.get("cpu_flags", {})
    if not isinstance(cpu, dict):
        raise LockError("[llama_cpp] cpu_flags must map CPU architectures to lists of flags")
    return LlamaCpp(
        sdist=_string(table, "llama_cpp", "sdist"),
        url=_string(table, "llama_cpp", "url"),
        sha256=sha256,
        subdir=str(table.get("subdir", "llama.cpp")),
        cmake_flags=_strings(table, "llama_cpp", "cmake_flags"),
        cuda_flags=_strings(table, "llama_cpp", "cuda_flags"),
        cpu_flags={machine: _strings(cpu, "llama_cpp", machine) for machine in cpu},
        targets=_strings(table, "llama_cpp", "targets") or ["llama-server"],
    )


def load_lock(path: Path = DEFAULT_LOCK) -> Lock:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise LockError(f"cannot read lock file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise LockError(f"lock file {path} is not valid TOML: {exc}") from None
    requirements = _table(data, "requirements")
    for venv in VENVS:
        _string(requirements, "requirements", venv)
    torch = _table(data, "torch")
    env = torch.get("build_env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise LockError("[torch] build_env must map names to strings")
    return Lock(
        path=path,
        python=str(_table(data, "python").get("version", "3.12")),
        requirements={venv: requirements[venv] for venv in VENVS},
        torch=TorchSource(*(_string(torch, "torch", key) for key in ("version", "repo", "ref")), dict(env)),
        llama_cpp=_llama_cpp(data),
        models=_table(data, "models"),
        packages=_strings(_table(data, "system"), "system", "packages"),
    )
