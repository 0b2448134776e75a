"""What this machine is: CPU architecture, OS, GPU and its compute capability, CUDA, Python, disk."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GPU:
    name: str
    capability: tuple[int, int]  # (12, 1) on a DGX Spark's GB10
    driver: str
    memory_mib: int = 0  # its own memory; 0 where it shares the system's (a GB10's unified memory)

    @property
    def arch_list(self) -> str:
        """TORCH_CUDA_ARCH_LIST form: 12.1"""
        return f"{self.capability[0]}.{self.capability[1]}"

    @property
    def cuda_arch(self) -> str:
        """CMAKE_CUDA_ARCHITECTURES form with the arch-specific suffix: 121a"""
        return f"{self.capability[0]}{self.capability[1]}a"

    @property
    def sm(self) -> str:
        return f"sm_{self.capability[0]}{self.capability[1]}"


@dataclass(frozen=True)
class Host:
    machine: str  # aarch64, x86_64
    os_id: str  # ubuntu, debian
    os_version: str
    python: str  # version of the python3.12 (or lock's) interpreter, "" if absent
    gpu: GPU | None
    cuda: str  # toolkit version from nvcc, "" if absent
    cores: int
    root: bool
    memory_gib: float = 0.0  # system memory (MemTotal)

    def describe(self) -> str:
        gpu = f"{self.gpu.name} ({self.gpu.sm}, driver {self.gpu.driver})" if self.gpu else "no NVIDIA GPU"
        return (
            f"{self.os_id} {self.os_version} {self.machine}, {gpu}, CUDA {self.cuda or 'absent'}, "
            f"Python {self.python or 'absent'}, {self.cores} cores"
        )


def _run(*argv: str) -> str:
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return ""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _os_release() -> dict[str, str]:
    try:
        lines = Path("/etc/os-release").read_text().splitlines()
    except OSError:
        return {}
    return {k: v.strip('"') for k, _, v in (line.partition("=") for line in lines) if k}


def detect_gpu() -> GPU | None:
    out = _run("nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total",
               "--format=csv,noheader,nounits")
    if not out:
        return None
    name, cap, driver, memory = (part.strip() for part in out.splitlines()[0].split(","))
    major, _, minor = cap.partition(".")
    # A GB10 answers "[N/A]": its memory is the system's.
    return GPU(name, (int(major), int(minor or 0)), driver, int(memory) if memory.isdigit() else 0)


def system_memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def detect_cuda() -> str:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    match = re.search(r"release (\d+\.\d+)", _run(nvcc, "--version"))
    return match.group(1) if match else ""


def detect(python: str = "3.12") -> Host:
    release = _os_release()
    version = _run(f"python{python}", "-c", "import platform; print(platform.python_version())")
    return Host(
        machine=platform.machine(),
        os_id=release.get("ID", ""),
        os_version=release.get("VERSION_ID", ""),
        python=version,
        gpu=detect_gpu(),
        cuda=detect_cuda(),
        cores=os.cpu_count() or 1,
        root=os.geteuid() == 0,
        memory_gib=system_memory_gib(),
    )


def free_gib(path: Path) -> float:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free / 2**30


# Kinds of host to plan for from another machine (`nemotron-install --dry-run --for spark`).
def _ubuntu(machine: str, gpu: GPU, cores: int, memory_gib: float) -> Host:
    return Host(machine, "ubuntu", "24.04", "3.12.3", gpu, "13.0", cores, True, memory_gib)


HOST_PROFILES = {
    # A DGX Spark: 128 GB of LPDDR5x shared by CPU and GPU, of which Linux reports about 119.7 GiB.
    "spark": _ubuntu("aarch64", GPU("NVIDIA GB10", (12, 1), "580.95.05"), 20, 119.7),
    "rtx5090": _ubuntu("x86_64", GPU("NVIDIA GeForce RTX 5090", (12, 0), "580.82.07", 32607), 32, 125.0),
    "h100": _ubuntu("x86_64", GPU("NVIDIA H100 80GB HBM3", (9, 0), "580.82.07", 81559), 64, 1000.0),
}
