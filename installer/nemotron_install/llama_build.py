"""The ``llama-cpp`` step: llama-server from the pinned source, for the detected GPU or the CPU.

One step serves every machine. On a GPU host the CUDA flags carry the detected architecture
(``121a`` on a DGX Spark); without a GPU (tests, CI) the build is for the CPU at the lock's portable
baseline, so the binary runs on any machine of that CPU architecture (no ``-march=native``, no
AVX2 assumed on x86-64). Everything else (source, patch, flags, targets) is the same.

Run alone, it builds into a directory of its own with stamps there, so an unchanged build is
skipped: ``tests/run`` keeps one such directory outside the clone as a cache.

    python -m nemotron_install.llama_build --cpu DIR      # DIR/bin/llama-server
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

from . import llama_patch
from .host import GPU, detect_gpu
from .lock import DEFAULT_LOCK, Lock, LockError, load_lock
from .steps import Command, Runner, Step, StepFailed


def cmake_flags(lock: Lock, gpu: GPU | None, machine: str, nvcc: str = "/usr/local/cuda/bin/nvcc",
                ) -> list[str]:
    pin = lock.llama_cpp
    if gpu is None:
        return [*pin.cmake_flags, "-DGGML_CUDA=OFF", *pin.cpu_flags.get(machine, [])]
    return [
        *pin.cmake_flags,
        *pin.cuda_flags,
        f"-DCMAKE_CUDA_ARCHITECTURES={gpu.cuda_arch}",
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
    ]


def step(
    lock: Lock,
    root: Path,
    gpu: GPU | None,
    machine: str,
    jobs: int,
    targets: list[str] | None = None,
    python: str = sys.executable,
    sdist: Path | None = None,
) -> Step:
    """Source into ROOT/src/llama.cpp, build in ROOT/build/llama.cpp, binaries in ROOT/llama.cpp/bin."""
    pin = lock.llama_cpp
    src, build, bin_dir = root / "src/llama.cpp", root / "build/llama.cpp", root / "llama.cpp/bin"
    targets = targets or pin.targets
    flags = cmake_flags(lock, gpu, machine)
    where = f"CUDA arch {gpu.cuda_arch}" if gpu else f"the CPU ({machine} baseline)"
    return Step(
        "llama-cpp",
        f"llama.cpp {pin.sdist} for {where}, with the server patch",
        inputs={"sdist": pin.sdist, "sha256": pin.sha256, "flags": flags, "targets": targets,
                "patch": llama_patch.FINGERPRINT},
        commands=[
            Command([python, "-m", "nemotron_install.llama_source", "--lock", str(lock.path),
                     *(["--sdist", str(sdist)] if sdist else []), str(src)]),
            Command(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", *flags]),
            Command(["cmake", "--build", str(build), "--target", *targets, "-j", str(jobs)]),
            *(Command(["install", "-D", "-m", "0755", str(build / "bin" / target), str(bin_dir / target)])
              for target in targets),
        ],
        outputs=[bin_dir / t for t in targets],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build llama-server with the installer's llama-cpp step.")
    parser.add_argument("root", type=Path, help="build root: src/, build/, llama.cpp/bin/, stamps/, logs/")
    parser.add_argument("--cpu", action="store_true", help="build for the CPU even where a GPU is present")
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK)
    parser.add_argument("--jobs", type=int, default=0, help="parallel compile jobs [all cores]")
    parser.add_argument("--target", action="append", help="build only this target (repeatable)")
    parser.add_argument("--sdist", type=Path, help="a local copy of the pinned sdist (checked by sha256)")
    args = parser.parse_args(argv)
    try:
        lock = load_lock(args.lock)
    except LockError as exc:
        sys.exit(f"error: {exc}")
    root = args.root.resolve()
    gpu = None if args.cpu else detect_gpu()
    build = step(lock, root, gpu, platform.machine(), args.jobs or os.cpu_count() or 1, args.target,
                 sdist=args.sdist.resolve() if args.sdist else None)
    try:
        Runner(root / "stamps", root / "logs").run([build])
    except StepFailed as failure:
        tail = failure.log.read_text(errors="replace").splitlines()[-20:]
        sys.exit("\n".join(tail) + f"\nerror: {failure}\n    log: {failure.log}")
    print(root / "llama.cpp/bin/llama-server")


if __name__ == "__main__":
    main()
