"""Reading the requirement locks in ``locks/``: the exact pins, and how two variants compare."""

from __future__ import annotations

import re
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")
_HASH = re.compile(r"--hash=sha256:([0-9a-f]{64})")
# What a CUDA build of torch brings and a CPU build does not; also the build's local version label.
TORCH_BUILD = re.compile(r"^(torch|triton|cuda-.*|nvidia-.*)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def hashed_pins(path: Path) -> dict[str, tuple[str, set[str]]]:
    """Package name (normalized) -> (exact version, its sha256 hashes), from a uv/pip-tools
    requirements file."""
    found: dict[str, tuple[str, set[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        if match := _PIN.match(line):
            name = normalize(match.group(1))
            found[name] = (match.group(2), set())
        elif name and (hash_ := _HASH.search(line)):
            found[name][1].add(hash_.group(1))
        elif not line.startswith(" "):
            name = None
    return found


def pins(path: Path) -> dict[str, str]:
    """Package name (normalized) -> exact version."""
    return {name: version for name, (version, _) in hashed_pins(path).items()}


def differences(gpu: dict[str, str], cpu: dict[str, str]) -> list[str]:
    """Where a cpu variant departs from its gpu twin, other than in torch's build."""
    problems = []
    for name in sorted(set(gpu) | set(cpu)):
        if TORCH_BUILD.match(name):
            continue
        if name not in cpu:
            problems.append(f"{name}=={gpu[name]} only in the gpu lock")
        elif name not in gpu:
            problems.append(f"{name}=={cpu[name]} only in the cpu lock")
        elif gpu[name] != cpu[name]:
            problems.append(f"{name}: gpu {gpu[name]}, cpu {cpu[name]}")
    torch_gpu, torch_cpu = gpu.get("torch", ""), cpu.get("torch", "")
    if torch_gpu.split("+")[0] != torch_cpu.split("+")[0]:
        problems.append(f"torch: gpu {torch_gpu}, cpu {torch_cpu} (only the build label may differ)")
    return problems


def headline(path: Path, names: tuple[str, ...] = ("torch", "nemo-toolkit", "vllm", "transformers")) -> str:
    """The pins a reader looks for first, and how many there are in all."""
    found = pins(path)
    shown = ", ".join(f"{n}=={found[n]}" for n in names if n in found)
    return f"{shown} ({len(found)} packages, hashes checked)"
