"""WebSocket transport: the bots' ASR protocol and ``GET /health`` on one port.

``process_request`` answers health checks (and refuses WebSocket handshakes while the model loads)
before any upgrade. Each connection runs a reader (``async for``) and a writer draining the
session's outbox, so a slow client never blocks the engine.
"""

from __future__ import annotations

import asyncio
import http
import json
from typing import TYPE_CHECKING

from loguru import logger
from nemotron_common.access import Access
from nemotron_common.health import HEALTH_PATHS, Health
from nemotron_common.metrics import METRICS_PATH
from nemotron_common.models_list import MODELS_PATH, models_body
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import protocol
from .metrics import ASRMetrics
from .session import Session

if TYPE_CHECKING:
    from .engine import Engine

STREAM_PATHS = ("/", "/ws", "/v1/asr/stream")


def json_response(status: int, body: bytes) -> Response:
    headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                       ("Connection", "close")])
    return Response(status, http.HTTPStatus(status).phrase, headers, body)


class Transport:
    def __init__(self, health: Health, host: str, port: int, max_sessions: int,
                 max_frame_bytes: int, access: Access | None = None, model_id: str = "asr") -> None:
        self.health = health
        self.model_id = model_id
        self.access = access or Access()
        self.host, self.port = host, port
        self.max_sessions = max_sessions
        self.max_frame_bytes = max_frame_bytes
        self.engine: Engine | None = None  # set once the model is loaded
        self.sessions: set[Session] = set()
        self.connections: set[ServerConnection] = set()
        self.server: Server | None = None
        self.accepting = True
        self.metrics = ASRMetrics(lambda: len(self.sessions), max_sessions, lambda: self.engine)

    async def start(self) -> None:
        self.server = await serve(
            self._handle, self.host, self.port, process_request=self._process_request,
            compression=None,  # raw PCM does not compress; deflate only costs CPU
            max_size=self.max_frame_bytes * 4,  # larger frames get an error message, huge ones a 1009 close
            max_queue=64, ping_interval=20, ping_timeout=20)
        self.port = self.server.sockets[0].getsockname()[1]
        logger.info(f"listening on ws://{self.host}:{self.port}/ (health at /health)")

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            return self._route(request)
        except Exception as exc:
            logger.opt(exception=exc).error(f"answering {request.path} failed: {exc}")
            raise

    def _route(self, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path in HEALTH_PATHS:
            return json_response(*self.health.encode(path))
        if (refusal := self.access.refusal(request.headers)) is not None:
            status, message = refusal
            self.metrics.errors.labels("unauthorized" if status == 401 else "forbidden_origin").inc()
            return json_response(status, json.dumps({"error": message}).encode())
        if path == MODELS_PATH:
            return json_response(200, models_body(self.model_id))
        if path == METRICS_PATH:
            body, content_type = self.metrics.metrics.render()
            headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body)))])
            return Response(200, "OK", headers, body)
        if path not in STREAM_PATHS:
            return json_response(404, b'{"error":"not found; the ASR WebSocket is at /"}')
        if self.engine is None or not self.health.ready or not self.accepting:
            return json_response(503, b'{"error":"ASR is not ready"}')
        return None

    async def _handle(self, connection: ServerConnection) -> None:
        peer = "{}:{}".format(*connection.remote_address[:2])
        if len(self.sessions) >= self.max_sessions:
            logger.warning(f"{peer}: refused, {self.max_sessions} sessions already open")
            self.metrics.errors.labels("too_many_sessions").inc()
            await connection.send(protocol.error_message(
                f"too many sessions: the server is limited to {self.max_sessions}; try again later"))
            await connection.close(1013, "too many sessions")
            return
        session = Session(self.engine, self.max_frame_bytes, peer, self.metrics)
        self.sessions.add(session)
        self.connections.add(connection)
        writer = session.writer = asyncio.create_task(self._write(connection, session))
        logger.debug(f"{peer}: session {session.stream_id} opened")
        try:
            await connection.send(protocol.ready_message())
            async for frame in connection:
                if isinstance(frame, bytes):
                    session.on_binary(frame)
                else:
                    session.on_text(frame)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            self.connections.discard(connection)
            session.close()
            await asyncio.gather(writer, return_exceptions=True)
            logger.debug(f"{peer}: session {session.stream_id} closed")

    async def _write(self, connection: ServerConnection, session: Session) -> None:
        while (message := await session.outbox.get()) is not None:
            try:
                await connection.send(message)
            except ConnectionClosed:
                return

    async def drain(self, timeout_s: float) -> None:
        """Stop taking connections, give open sessions their final transcripts, then close them."""
        self.accepting = False
        if self.server:
            self.server.close(close_connections=False)
        sessions = list(self.sessions)
        if sessions:
            logger.info(f"finishing {len(sessions)} open session(s)")
            await asyncio.gather(*(s.drain(timeout_s) for s in sessions))
            for session in sessions:  # let the writers flush the final transcripts
                session.outbox.put_nowait(None)
            await asyncio.wait([s.writer for s in sessions], timeout=timeout_s)
        await self.close()

    async def close(self) -> None:
        # Server.close() acts only on its first call (the drain's, which left connections open),
        # so close what is still open here, with 1001 "going away".
        await asyncio.gather(*(c.close(1001, "server shutting down") for c in list(self.connections)),
                             return_exceptions=True)
        if self.server:
            self.server.close(close_connections=True)
            await self.server.wait_closed()
