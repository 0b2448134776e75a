"""Checks before anything is changed, each failure with the fix spelled out."""

from __future__ import annotations

import shutil
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .host import Host, free_gib
from .lock import Lock, LockError
from .options import Options, python_version

MIN_DRIVER = 580  # CUDA 13 needs an R580 driver
MIN_CAPABILITY = (8, 0)  # bf16 and the kernels the stack uses
BUILD_GIB = {"vllm": 60, "llamacpp-q8": 25, "llamacpp-q4": 25}  # venv, sources and builds
MODEL_GIB = {"vllm": 65, "llamacpp-q8": 40, "llamacpp-q4": 25}  # LLM weights plus ASR and TTS


@dataclass(frozen=True)
class Problem:
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.what}\n    fix: {self.fix}"


def _reachable(url: str) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5):
            return True
    except OSError:
        return False


def check(
    host: Host,
    options: Options,
    lock: Lock,
    disk: Callable[[Path], float] = free_gib,
    reachable: Callable[[str], bool] = _reachable,
    have: Callable[[str], bool] = lambda tool: shutil.which(tool) is not None,
) -> list[Problem]:
    problems = []
    if not host.root:
        problems.append(
            Problem("nemotron-install changes the system and must run as root", "sudo nemotron-install")
        )
    if options.profile == "cpu-test":
        venv = options.venv_dir / "bin/python"
        if not venv.exists():
            problems.append(
                Problem(f"the cpu-test profile reuses a venv, and {venv} is missing", "pass --venv")
            )
        return problems
    if options.profile == "cpu":
        return problems + _python_and_network(host, options, lock, have, reachable)
    if host.machine not in ("aarch64", "x86_64"):
        problems.append(
            Problem(f"unsupported CPU architecture {host.machine}", "use an aarch64 or x86_64 host")
        )
    if host.gpu is None:
        problems.append(
            Problem(
                "no NVIDIA GPU found (nvidia-smi failed)",
                "install the NVIDIA driver (R580 or newer) and check that `nvidia-smi` lists the GPU",
            )
        )
    else:
        if host.gpu.capability < MIN_CAPABILITY:
            problems.append(
                Problem(
                    f"{host.gpu.name} has compute capability {host.gpu.arch_list}; "
                    "the stack needs 8.0 or newer",
                    "use an Ampere or newer GPU (DGX Spark GB10, RTX 5090 and H100 are tested targets)",
                )
            )
        driver_major = int(host.gpu.driver.split(".")[0]) if host.gpu.driver[:1].isdigit() else 0
        if driver_major < MIN_DRIVER:
            problems.append(
                Problem(
                    f"NVIDIA driver {host.gpu.driver} is older than R{MIN_DRIVER}, which CUDA 13 needs",
                    "upgrade the driver (on DGX OS: apt install the latest nvidia-driver-580 or newer)",
                )
            )
    builds_llama = options.llm and options.mode != "vllm" and not options.llama_server
    if (builds_llama or options.torch_source == "source") and (
        not host.cuda or int(host.cuda.split(".")[0]) < 13
    ):
        what = "torch" if options.torch_source == "source" else "llama.cpp"
        problems.append(
            Problem(
                f"CUDA toolkit 13 is needed to build {what} (found: {host.cuda or 'none'})",
                "install cuda-toolkit-13 so /usr/local/cuda/bin/nvcc exists"
                + (", or pass --llama-server PATH" if what == "llama.cpp" else ""),
            )
        )
    for path, what, need, fix in (
        (options.prefix, "the build needs", BUILD_GIB[options.mode],
         "free space there or choose another --prefix"),
        (options.state_dir, "the models need", MODEL_GIB[options.mode],
         "free space there (models already downloaded are reused)"),
    ):
        free = disk(path)
        if free < need:
            problems.append(Problem(f"{free:.0f} GiB free under {path}; {what} about {need} GiB", fix))
    return problems + _python_and_network(host, options, lock, have, reachable)


def _python_and_network(host, options, lock, have, reachable) -> list[Problem]:
    problems = []
    python = python_version(options, lock)
    if not host.python and not have("apt-get"):
        problems.append(
            Problem(
                f"Python {python} is missing and apt-get is not available to install it",
                f"install python{python} and python{python}-venv, or pass --python with one that is there",
            )
        )
    if host.machine not in ("aarch64", "x86_64"):
        return problems
    # Wheels come from PyPI, llama.cpp's source from PyPI's file host.
    for url in ("https://pypi.org/simple/", lock.llama_cpp.url):
        if not reachable(url):
            problems.append(
                Problem(
                    f"cannot reach {url}",
                    "connect the host to the network, or point PIP_INDEX_URL and the lock file (--lock) "
                    "at a local mirror",
                )
            )
            break
    try:
        lock.requirements_file("stack", options.variant, host.machine)
    except LockError as exc:
        problems.append(Problem(str(exc), "run installer/update-locks for this machine, or use a host the "
                                          "locks cover (aarch64 or x86_64 with a GPU)"))
    return problems
