"""Runtime fixes for NeMo 3.0.0 bugs that bite a long-running server on CUDA, or an older Python.

NeMo compiles small CUDA kernels for its graph-captured greedy decoders with NVRTC
(``nemo.core.utils.cuda_python_utils.run_nvrtc``). Two problems there:

- It allocates the compile log as ``b" " * size`` and lets NVRTC write into it. An empty log has
  size 1, and ``b" " * 1`` is CPython's shared one-byte ``b" "`` object, which then becomes
  ``b"\\x00"`` for the whole process: every later ``b" "`` literal is a NUL byte. In our server this
  broke the websockets HTTP parser (``request_line.split(b" ")``), so every connection after model
  load was dropped without a response.
- It passes no ``--gpu-architecture``, which fails on GPUs newer than NVRTC's default target (the
  reference build for GB10, sm_121, patched NeMo's source for this).

Both are fixed by giving ``run_nvrtc`` (which looks ``nvrtc`` up at call time) a wrapper of the
``nvrtc`` module; NeMo's files stay untouched, so a NeMo upgrade cannot silently undo the fix.

NeMo also unpacks ``.nemo`` files with ``tar.extract(..., filter="data")``, which Python only has
since 3.11.4: on Debian 12's Python 3.11.2 every model load failed with a TypeError. There its
``safe_extract`` is replaced by one that makes the same checks (no absolute paths, no ``..``, no
links) plus the filter's own (regular files and directories only) and extracts without the keyword.
"""

from __future__ import annotations

import os
import sys

from loguru import logger


class _SafeNvrtc:
    def __init__(self, nvrtc, arch_option: bytes | None) -> None:
        self._nvrtc = nvrtc
        self._arch_option = arch_option

    def __getattr__(self, name: str):
        return getattr(self._nvrtc, name)

    def nvrtcGetProgramLog(self, prog, buffer):  # noqa: N802 - NVRTC's name
        # A private buffer, never a shared interned bytes object; NeMo does not read the log.
        return self._nvrtc.nvrtcGetProgramLog(prog, bytes(bytearray(max(len(buffer), 2))))

    def nvrtcCompileProgram(self, prog, count, options):  # noqa: N802 - NVRTC's name
        options = list(options)
        if self._arch_option and not any(o.startswith(b"--gpu-architecture") for o in options):
            options.append(self._arch_option)
        return self._nvrtc.nvrtcCompileProgram(prog, len(options), options)


def _arch_option() -> bytes | None:
    import torch

    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return f"--gpu-architecture=compute_{major}{minor}".encode()


def apply() -> None:
    _patch_nvrtc()
    _patch_tar_extract()


def _patch_tar_extract() -> None:
    import tarfile

    if hasattr(tarfile, "data_filter"):
        return
    try:
        from nemo.utils import tar_utils
    except ImportError:
        return
    if getattr(tar_utils.safe_extract, "nemotron_fix", False):
        return

    def safe_extract(tar, path, members=None, *, skip_unsafe=False):
        extract_to = os.path.realpath(path)
        os.makedirs(extract_to, exist_ok=True)
        extracted = []
        for member in tar.getmembers() if members is None else members:
            member = tar.getmember(member) if isinstance(member, str) else member
            if tar_utils.is_safe_tar_member(member, extract_to) and (member.isfile() or member.isdir()):
                tar.extract(member, extract_to)
                extracted.append(member)
            elif skip_unsafe:
                logger.warning(f"skipping potentially unsafe tar member {member.name}")
            else:
                raise tar_utils.TarPathTraversalError(f"unsafe tar member: {member.name}")
        return extracted

    safe_extract.nemotron_fix = True
    # Every module that imported the function by name, not only where it is defined.
    for name in ("nemo.utils.tar_utils", "nemo.core.connectors.save_restore_connector",
                 "nemo.utils.model_utils", "nemo.utils.notebook_utils"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "safe_extract"):
            module.safe_extract = safe_extract
    logger.debug("NeMo extracts .nemo files without tarfile's data filter (Python {})",
                 sys.version.split()[0])


def _patch_nvrtc() -> None:
    try:
        from nemo.core.utils import cuda_python_utils
    except ImportError:
        return
    nvrtc = getattr(cuda_python_utils, "nvrtc", None)
    if nvrtc is None or isinstance(nvrtc, _SafeNvrtc):
        return
    cuda_python_utils.nvrtc = _SafeNvrtc(nvrtc, _arch_option())
    logger.debug("patched NeMo's NVRTC helper (shared log buffer, GPU architecture option)")


def check_interned_bytes() -> None:
    """Fail loudly if some extension corrupted CPython's shared one-byte objects."""
    if b" " != bytes([32]):
        raise RuntimeError("the interned b' ' object was overwritten by a C extension; "
                           "HTTP parsing would fail")


def collect_restore_leftovers() -> None:
    """Free what ``restore_from`` leaves in reference cycles before the next allocation.

    After restoring, the checkpoint's tensors stay alive in reference cycles until Python's next
    collection (counted with the tiny ASR model on the CPU: live tensors shrank by the weights' fp32
    size at the first collection). On a GPU that is a whole fp32 state dict next to the bf16
    weights, and memory freed later stays in the caching allocator, where CUDA-graph pools cannot use
    it (bench/results/memory-h200-run4.md)."""
    import gc

    gc.collect()
