"""Run a real server process the way systemd would: NOTIFY_SOCKET, JOURNAL_STREAM, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NotifyListener:
    """A unix datagram socket standing in for systemd's NOTIFY_SOCKET; records every message."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="notify-")
        self.path = os.path.join(self.dir, "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode("latin-1")))

    def fields(self) -> list[str]:
        return [line for _, message in self.messages for line in message.split("\n")]

    def wait_for(self, field: str, timeout: float, process: subprocess.Popen | None = None) -> bool:
        """Whether ``field`` arrived within ``timeout``; False at once when ``process`` exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if field in self.fields():
                return True
            if process is not None and process.poll() is not None:
                time.sleep(0.1)  # a last datagram sent just before the exit
                return field in self.fields()
            time.sleep(0.05)
        return False

    def close(self) -> None:
        """Stop listening, keeping every datagram already sent (a last STOPPING=1 the thread had not read)."""
        self._stop = True
        self._thread.join(timeout=2)
        self.sock.setblocking(False)
        while True:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(65536).decode("latin-1")))
            except OSError:  # none left (BlockingIOError)
                break
        self.sock.close()


def get_json(url: str, timeout: float = 2.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class ServerProcess:
    def __init__(self, module: str, args: list[str], env: dict[str, str] | None = None,
                 notify: bool = True) -> None:
        self.port = free_port()
        self.notify = NotifyListener() if notify else None
        self.log_path = Path(tempfile.mkstemp(prefix=f"{module}-", suffix=".log")[1])
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        if self.notify:
            environment["NOTIFY_SOCKET"] = self.notify.path
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(self.port), *args],
            env=environment, stdout=self.log_path.open("w"), stderr=subprocess.STDOUT)
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/"

    def health(self, path: str = "/health") -> tuple[int, dict]:
        return get_json(self.base + path)

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            try:
                self.health()
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.05)
        raise TimeoutError(f"server did not listen within {timeout} s:\n{self.log()}")

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_running()
            try:
                if self.health()[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready within {timeout} s:\n{self.log()}")

    def _check_running(self) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if self.notify:
                self.notify.close()


def scrape(base: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    """GET /metrics, parsed by prometheus_client's own text-format parser: (sample name, sorted
    labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    request = urllib.request.Request(base + "/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def spawned_children(pid: int) -> list[int]:
    """The children multiprocessing spawned (another child may be its resource tracker)."""
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():  # each thread's own children
        try:
            children += (task / "children").read_text().split()
        except FileNotFoundError:
            pass  # a thread that ended meanwhile
    return [int(c) for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def engine_process_of(pid: int, port: int | None = None) -> int:
    """The pid of the server's engine process: its spawned child, or with transport workers the one
    that does not listen on ``port``."""
    spawned = [c for c in spawned_children(pid) if port is None or not tcp_sockets(c, port)["listen"]]
    assert len(spawned) == 1, spawned
    return spawned[0]


def tcp_sockets(pid: int, port: int) -> dict[str, int]:
    """How many TCP sockets on local ``port`` process ``pid`` holds, listening and connected (its
    descriptors' socket inodes, looked up in the kernel's IPv4 and IPv6 tables)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    counts = {"listen": 0, "established": 0}
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local_port, state, inode = int(fields[1].rsplit(":", 1)[1], 16), fields[3], fields[9]
            if local_port == port and inode in inodes:
                kind = {"0A": "listen", "01": "established"}.get(state, "other")
                counts[kind] = counts.get(kind, 0) + 1
    return counts
