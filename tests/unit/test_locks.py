"""The requirement locks: one set of versions for GPU hosts and CI, and every pin real.

The cpu variants are what CI installs; they may differ from the gpu ones only in torch's build (the
CPU wheel and what a CUDA build brings along). The vLLM parser's cpu lock is a subset of the vLLM
lock, and only its torch differs (the parser reads arguments and runs no model).
"""

import os
import re
from pathlib import Path

import pytest
from nemotron_install.lock import load_lock
from nemotron_install.requirements import TORCH_BUILD, differences, hashed_pins, pins

LOCK = load_lock()
LOCKS = LOCK.path.parent / "locks"
ALL = sorted(LOCKS.glob("*.txt"))


def test_every_variant_named_by_the_lock_exists():
    for venv, variant, machine in [("stack", "gpu", "aarch64"), ("stack", "gpu", "x86_64"),
                                   ("stack", "cpu", "x86_64"), ("vllm", "gpu", "aarch64"),
                                   ("vllm", "gpu", "x86_64"), ("vllm", "cpu", "x86_64"),
                                   ("test", "cpu", "x86_64")]:
        assert LOCK.requirements_file(venv, variant, machine).is_file()


@pytest.mark.parametrize("machine", ["aarch64", "x86_64"])
def test_cpu_stack_is_the_gpu_stack_but_for_torch_build(machine):
    gpu = pins(LOCK.requirements_file("stack", "gpu", machine))
    cpu = pins(LOCK.requirements_file("stack", "cpu", "x86_64"))
    assert differences(gpu, cpu) == []
    assert gpu["torch"] == LOCK.torch.version and cpu["torch"] == LOCK.torch.version + "+cpu"


def test_the_comparison_catches_a_moved_pin():
    gpu = pins(LOCK.requirements_file("stack", "gpu", "x86_64"))
    cpu = dict(gpu, numpy="0.0.1", torch=gpu["torch"] + "+cpu")
    del cpu["scipy"]
    assert differences(gpu, cpu) == [f"numpy: gpu {gpu['numpy']}, cpu 0.0.1",
                                     f"scipy=={gpu['scipy']} only in the gpu lock"]
    assert differences(gpu, dict(gpu, torch="2.0.0+cpu"))[-1].startswith("torch: gpu")


def test_vllm_parser_lock_is_a_subset_of_the_vllm_lock():
    gpu = pins(LOCK.requirements_file("vllm", "gpu", "x86_64"))
    cpu = pins(LOCK.requirements_file("vllm", "cpu", "x86_64"))
    moved = [f"{name}: {gpu.get(name)} / {version}" for name, version in cpu.items()
             if not TORCH_BUILD.match(name) and gpu.get(name) != version]
    assert moved == []
    assert gpu["vllm"] == "0.33.0"


def test_tests_and_stack_agree_and_the_project_pins_are_the_locked_ones():
    stack = pins(LOCK.requirements_file("stack", "cpu", "x86_64"))
    tools = pins(LOCK.requirements_file("test", "cpu", "x86_64"))
    assert [name for name in tools if name in stack and tools[name] != stack[name]] == []
    pyproject = (LOCK.path.parents[2] / "pyproject.toml").read_text()
    assert f'nemo_toolkit[asr]=={stack["nemo-toolkit"]}' in pyproject


def _local_wheel_hashes() -> set[str]:
    from nemotron_install.llama_source import sha256_of

    folders = [Path(p) for p in os.environ.get("PIP_FIND_LINKS", "/opt/wheels").split()]
    return {sha256_of(wheel) for folder in folders if folder.is_dir() for wheel in folder.glob("*.whl")}


def test_every_pin_is_hashed():
    """pip's --require-hashes refuses a lock with an unhashed pin, on the host, mid-install."""
    unhashed = [f"{path.name}: {name}" for path in ALL for name, (_, hashes) in hashed_pins(path).items()
                if not hashes or not all(re.fullmatch(r"[0-9a-f]{64}", h) for h in hashes)]
    assert unhashed == []


def test_the_cpu_torch_pin_is_the_local_wheel():
    """The +cpu torch is not on PyPI: its hash must be the wheel CI installs from PIP_FIND_LINKS.
    (That every other hash names a PyPI file, installer/check-locks checks when the locks change.)"""
    local = _local_wheel_hashes()
    if not local:
        pytest.skip("no local wheel folder on this machine (PIP_FIND_LINKS)")
    for path in ALL:
        for name, (version, hashes) in hashed_pins(path).items():
            if "+" in version:
                assert hashes & local, f"{path.name}: {name}=={version} has no local wheel"
