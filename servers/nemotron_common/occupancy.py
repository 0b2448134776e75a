"""Open sessions against a service's limit, counted across its processes.

A service with transport workers admits a client in whichever process the kernel handed the
connection to; the count lives in one shared integer so that ``max_sessions`` bounds the service,
not each process, and ``/health`` reports every process's sessions.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.sharedctypes import Synchronized


class SessionCount:
    def __init__(self, limit: int, shared: Synchronized | None = None) -> None:
        """``shared``: the count of the service's other processes (from :attr:`shared`); None starts one."""
        self.limit = limit
        self.shared = shared if shared is not None else multiprocessing.get_context("spawn").Value("i", 0)

    def take(self) -> bool:
        """Count one more session, unless the limit is reached (then False, and nothing counted)."""
        with self.shared.get_lock():
            if self.shared.value >= self.limit:
                return False
            self.shared.value += 1
            return True

    def release(self) -> None:
        with self.shared.get_lock():
            self.shared.value -= 1

    def __len__(self) -> int:
        return self.shared.value
