"""sd_notify messages for a ``Type=notify`` unit, through the ``sdnotify`` package.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a cheap no-op.
"""

from __future__ import annotations

import os

import sdnotify
from loguru import logger


def _ascii(text: str) -> str:
    # sdnotify encodes as Latin-1 and silently drops a datagram that does not encode.
    return text.encode("ascii", "replace").decode("ascii").replace("\n", " ")


class Notifier:
    def __init__(self) -> None:
        self._notifier = sdnotify.SystemdNotifier()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))

    def send(self, *fields: str) -> None:
        if self.enabled:
            self._notifier.notify("\n".join(fields))

    def status(self, text: str, extend_timeout_s: float | None = None) -> None:
        """Report progress; with ``extend_timeout_s`` also grant that much more start time."""
        logger.info(text)
        fields = [f"STATUS={_ascii(text)}"]
        if extend_timeout_s:
            fields.append(f"EXTEND_TIMEOUT_USEC={int(extend_timeout_s * 1_000_000)}")
        self.send(*fields)

    def ready(self, text: str) -> None:
        logger.success(text)
        self.send("READY=1", f"STATUS={_ascii(text)}", f"MAINPID={os.getpid()}")

    def stopping(self, text: str) -> None:
        logger.info(text)
        self.send("STOPPING=1", f"STATUS={_ascii(text)}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    @staticmethod
    def watchdog_interval_s() -> float | None:
        """Half the watchdog period systemd asked for, or None when it asked for none."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000
        except ValueError:
            return None
