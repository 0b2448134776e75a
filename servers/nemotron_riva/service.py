"""The Riva gateway as a service: a gRPC server for Riva's speech APIs, in the shared lifecycle.

It holds no model: loading means waiting until the ASR and TTS servers it forwards to are ready.
The standard gRPC health service reports SERVING once they are.
"""

from __future__ import annotations

import asyncio

import grpc
from loguru import logger
from nemotron_common.access import read_api_key
from nemotron_common.health import Health
from nemotron_common.lifecycle import Progress
from riva.client.proto import health_pb2, health_pb2_grpc
from riva.client.proto import riva_asr_pb2_grpc as asr_grpc
from riva.client.proto import riva_tts_pb2_grpc as tts_grpc

from .config import RivaConfig
from .recognition import Recognition
from .synthesis import Synthesis
from .upstream import Upstream


class RivaService:
    name = "nemotron-riva"

    def __init__(self, config: RivaConfig) -> None:
        self.config = config
        self.health = Health("riva")
        self.upstream = Upstream(config.asr_url, config.tts_url, read_api_key(config.api_key_file))
        self.server: grpc.aio.Server | None = None
        self.grpc_health = _GrpcHealth()
        self._never = asyncio.Event()

    async def listen(self) -> None:
        self.server = grpc.aio.server()
        asr_grpc.add_RivaSpeechRecognitionServicer_to_server(
            Recognition(self.upstream, self.config.endpoint_ms), self.server)
        tts_grpc.add_RivaSpeechSynthesisServicer_to_server(Synthesis(self.upstream), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.grpc_health, self.server)
        address = f"{self.config.host}:{self.config.port}"
        self.config.port = self.server.add_insecure_port(address)
        await self.server.start()
        logger.info(f"listening on {self.config.host}:{self.config.port} (gRPC: Riva ASR and TTS, health); "
                    f"{'API key required' if self.upstream.api_key else 'no API key'}")

    def load_and_warm_up(self, progress: Progress) -> str:
        self.upstream.wait_ready(self.config.upstream_timeout, progress)
        voices = ", ".join(self.upstream.tts_config["voices"])
        return f"ready: ASR at {self.config.asr_url}, TTS at {self.config.tts_url} (voices {voices})"

    def serving(self) -> None:
        self.grpc_health.serving = True  # gRPC's health says SERVING once /health does

    def engine_alive(self) -> bool:
        return True  # no engine of its own: ASR and TTS have their own watchdogs

    async def wait_engine_failed(self) -> None:
        await self._never.wait()

    async def drain(self, timeout_s: float) -> None:
        self.grpc_health.serving = False
        if self.server is not None:
            await self.server.stop(grace=timeout_s)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=None)


class _GrpcHealth(health_pb2_grpc.HealthServicer):
    """The standard gRPC health check (grpc.health.v1): SERVING once ASR and TTS are ready."""

    def __init__(self) -> None:
        self.serving = False

    async def Check(self, request, context) -> health_pb2.HealthCheckResponse:
        status = health_pb2.HealthCheckResponse.SERVING if self.serving else \
            health_pb2.HealthCheckResponse.NOT_SERVING
        return health_pb2.HealthCheckResponse(status=status)
