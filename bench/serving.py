"""Starting and reading the servers under benchmark."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def unit_environment(service: str) -> dict[str, str]:
    """The PyTorch settings the installed systemd unit gives ``service`` (its ``Environment=PYTORCH_*``
    lines), so that a benchmark measures the server as it runs installed: the allocator's settings
    change how much GPU memory a server holds."""
    settings = {}
    for line in (ROOT / "units" / f"nemotron-{service}.service").read_text().splitlines():
        if line.startswith("Environment=PYTORCH_"):
            key, _, value = line.removeprefix("Environment=").partition("=")
            settings[key] = value
    return settings


def server_env(service: str, servers: Path = ROOT / "servers") -> dict[str, str]:
    """The environment to start ``service`` from the ``servers`` tree with: its unit's PyTorch settings
    (a variable already set here wins, to compare against), the tree first on the import path."""
    path = os.pathsep.join(filter(None, [str(Path(servers).resolve()), os.environ.get("PYTHONPATH")]))
    return {**unit_environment(service), **os.environ, "PYTHONPATH": path}


def wait_ready(port: int, process: subprocess.Popen, timeout: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - started
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server did not become ready")


def stop(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM (the server drains), then SIGKILL if it is still there after ``timeout``."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def host_name() -> str:
    """The host's CPU model and core count: the servers' host work (features, decoding's copies,
    results, the load generator) runs there, and machines of one GPU kind differ in it."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def _tree(pid: int) -> set[int]:
    """``pid`` and all its descendants."""
    pids, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            if child not in pids:
                pids.add(child)
                frontier.append(child)
    return pids


def gpu_mib(pid: int) -> int:
    """GPU memory (MiB) nvidia-smi reports for the process tree of ``pid``."""
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"]
    out = subprocess.run(query, capture_output=True, text=True, check=True).stdout
    tree = _tree(pid)
    return sum(int(used) for line in out.splitlines() if line.strip()
               for apid, used in [line.split(",")] if int(apid) in tree)
