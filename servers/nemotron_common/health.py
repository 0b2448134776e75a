"""The health state every port reports at ``GET /health`` from its first second."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any

HEALTH_PATHS = ("/health", "/v1/health/live", "/v1/health/ready")


class State(StrEnum):
    LOADING = "loading"
    HEALTHY = "healthy"
    STOPPING = "stopping"
    FAILED = "failed"


class Health:
    def __init__(self, service: str, details: Callable[[], dict[str, Any]] | None = None) -> None:
        self.service = service
        self.state = State.LOADING
        self.stage = "starting"
        self.started = time.monotonic()
        self._details = details or dict

    @property
    def ready(self) -> bool:
        return self.state is State.HEALTHY

    def answer(self, path: str) -> tuple[int, dict[str, Any]]:
        """HTTP status and JSON body for one of :data:`HEALTH_PATHS`."""
        body: dict[str, Any] = {"status": self.state.value, "service": self.service,
                                "model_loaded": self.ready,
                                "uptime_s": round(time.monotonic() - self.started, 1)}
        if self.state is State.LOADING:
            body["stage"] = self.stage
        body.update(self._details())
        if path == "/v1/health/live":
            return (200 if self.state is not State.FAILED else 503), body
        return (200 if self.ready else 503), body

    def encode(self, path: str) -> tuple[int, bytes]:
        status, body = self.answer(path)
        return status, json.dumps(body).encode()
