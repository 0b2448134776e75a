"""Steps that build the Python side: the venvs from the locks, the check of PyTorch's kernels, vLLM and
the application."""

from __future__ import annotations

import hashlib
from pathlib import Path

from .host import Host
from .llama_source import sha256_of
from .lock import Lock
from .options import Options, python_version
from .requirements import headline
from .steps import Command, Step


def _pip(venv: Path, *args: str, env: dict[str, str] | None = None) -> Command:
    return Command([str(venv / "bin/python"), "-m", "pip", "install", "--progress-bar", "off", *args],
                   env=env or {})


def new_venv(name: str, what: str, venv: Path, python: str) -> Step:
    return Step(
        name,
        f"Python {python} venv for {what} at {venv}",
        inputs={"python": python, "venv": str(venv)},
        commands=[
            Command([f"python{python}", "-m", "venv", "--clear", str(venv)]),
            _pip(venv, "--upgrade", "pip", "wheel", "setuptools"),
        ],
        outputs=[venv / "bin/python"],
    )


_TORCH_COVERS_GPU = """
import sys, torch
major, minor = {major}, {minor}
archs = torch.cuda.get_arch_list()
print(torch.__version__, "CUDA", torch.version.cuda, archs)
# Kernels built for sm_XY run on sm_XZ with Z >= Y (same major): sm_120 wheels serve a GB10's sm_121.
built = [a.split("_")[1].rstrip("af") for a in archs]
if not any(int(b[:-1]) == major and int(b[-1]) <= minor for b in built):
    sys.exit(f"no kernels for sm_{{major}}{{minor}} in {{archs}}: re-run with --torch-source source")
"""


def verify_torch(venv: Path, host: Host) -> Command:
    major, minor = host.gpu.capability if host.gpu else (0, 0)
    return Command([str(venv / "bin/python"), "-c", _TORCH_COVERS_GPU.format(major=major, minor=minor)])


def stack(options: Options, host: Host, lock: Lock) -> list[Step]:
    """The servers' Python packages from the stack lock (torch and NeMo included), hashes required."""
    requirements = lock.requirements_file("stack", options.variant, host.machine)
    venv = options.venv_dir
    wheel_torch_on_gpu = options.variant == "gpu" and options.torch_source != "source"
    check = [verify_torch(venv, host)] if wheel_torch_on_gpu else []
    steps = [
        Step(
            "stack",
            f"PyTorch, NeMo and the servers' libraries from {requirements.name}: {headline(requirements)}",
            inputs={"lock": _digest(requirements)},
            commands=[_pip(venv, "--require-hashes", "--no-deps", "-r", str(requirements)), *check],
        )
    ]
    if options.torch_source == "source":
        src = options.prefix / "src/pytorch"
        arch = host.gpu.arch_list if host.gpu else ""
        env = {**lock.torch.build_env, "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(host.cores)}
        steps.append(
            Step(
                "torch-source",
                f"torch {lock.torch.ref} from source for sm {arch}, over the lock's wheel",
                inputs={"ref": lock.torch.ref, "env": env},
                commands=[
                    Command(["rm", "-rf", str(src)]),
                    Command(["git", "clone", "--depth", "1", "--branch", lock.torch.ref,
                             "--recurse-submodules", "--shallow-submodules", lock.torch.repo, str(src)]),
                    _pip(venv, "--no-build-isolation", "--no-deps", str(src), env=env),
                    verify_torch(venv, host),
                ],
            )
        )
    return steps


def vllm(options: Options, host: Host, lock: Lock) -> list[Step]:
    """vLLM's own venv from its lock: its torch and transformers pins differ from NeMo's."""
    requirements = lock.requirements_file("vllm", options.variant, host.machine)
    venv = options.vllm_venv_dir
    return [
        new_venv("vllm-venv", "vLLM", venv, python_version(options, lock)),
        Step(
            "vllm",
            f"vLLM from {requirements.name}: {headline(requirements)}",
            inputs={"lock": _digest(requirements)},
            commands=[
                _pip(venv, "--require-hashes", "--no-deps", "-r", str(requirements)),
                Command([str(venv / "bin/python"), "-c",
                         "import torch, vllm; print('torch', torch.__version__, 'vllm', vllm.__version__)"]),
            ],
        ),
    ]


def _digest(path: Path) -> str:
    return sha256_of(path)[:16]


def source_digest(source: Path) -> str:
    """What identifies the application's code: a wheel's bytes, or a source tree's tracked files."""
    if source.is_file():
        return _digest(source)
    digest = hashlib.sha256()
    for folder in ("servers", "installer", "units"):
        for path in sorted((source / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    digest.update((source / "pyproject.toml").read_bytes())
    return digest.hexdigest()[:16]


def application(options: Options) -> Step:
    # Not editable: the services run a copy that a later edit of the source cannot change.
    return Step(
        "application",
        f"nemotron-stack servers from {options.source}",
        inputs={"source": str(options.source), "digest": source_digest(options.source)},
        commands=[
            _pip(options.venv_dir, "--no-deps", "--no-build-isolation", "--force-reinstall",
                 str(options.source)),
            _check_entry_points(options),
        ],
    )


def _check_entry_points(options: Options) -> Command:
    scripts = " ".join(
        str(options.venv_dir / "bin" / n) for n in ("nemotron-asr", "nemotron-tts", "nemotron-llm")
    )
    return Command(["sh", "-c", f"for s in {scripts}; do [ -x $s ] || {{ echo missing $s; exit 1; }}; done"])


def cpu_test_application(options: Options) -> Step:
    return Step(
        "application",
        f"existing venv {options.venv_dir} has the servers",
        inputs={"venv": str(options.venv_dir)},
        commands=[_check_entry_points(options)],
    )


def triton_ptxas(options: Options) -> Step:
    """Triton's bundled ptxas lacks the arch-specific targets; point it at CUDA's (no package edits)."""
    env_file = options.config_path.parent / "environment"

    def write(log) -> None:
        env_file.write_text("TRITON_PTXAS_PATH=/usr/local/cuda/bin/ptxas\n")
        log(f"wrote {env_file}")

    return Step(
        "triton-ptxas",
        "Triton uses CUDA's ptxas",
        inputs={"file": str(env_file)},
        action=write,
        action_text=f"write TRITON_PTXAS_PATH=/usr/local/cuda/bin/ptxas to {env_file}",
    )
