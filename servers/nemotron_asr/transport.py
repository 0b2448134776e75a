"""ASR's routes on the shared HTTP layer: the bots' streaming WebSocket and OpenAI's transcriptions.

Each WebSocket runs a reader (``async for``) and a writer draining the session's outbox, so a slow
client never blocks the engine.
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import WSCloseCode, WSMsgType, web
from loguru import logger
from nemotron_common.access import Access
from nemotron_common.health import Health
from nemotron_common.http import HttpTransport, error_response
from nemotron_common.occupancy import SessionCount

from . import protocol, transcripts
from .interface import StreamEngine
from .metrics import ASRMetrics
from .session import Session
from .transcription import PATH as TRANSCRIPTIONS_PATH
from .transcription import BadUpload, Transcription, read_upload

STREAM_PATHS = ("/", "/ws", "/v1/asr/stream")
PING_INTERVAL_S = 20.0


class Transport(HttpTransport):
    def __init__(self, health: Health, host: str, port: int, count: SessionCount,
                 max_frame_bytes: int, access: Access | None = None, model_id: str = "asr",
                 max_upload_bytes: int = 25 * 2**20, reuse_port: bool = False) -> None:
        self.count = count  # open sessions and transcriptions, of every process serving the port
        self.max_sessions = count.limit
        self.max_frame_bytes = max_frame_bytes
        self.engine: StreamEngine | None = None  # set once the model is loaded
        self.sessions: set[Session] = set()
        self.transcriptions: set[Transcription] = set()
        self.sockets: set[web.WebSocketResponse] = set()
        metrics = ASRMetrics(lambda: len(count), count.limit, lambda: self.engine)
        # Idle keep-alive connections close after the ping interval; WebSockets have their own pings.
        super().__init__(health, host, port, access, model_id, metrics, max_body_bytes=max_upload_bytes,
                         idle_timeout_s=PING_INTERVAL_S, reuse_port=reuse_port)

    def routes(self, router: web.UrlDispatcher) -> None:
        for path in STREAM_PATHS:
            router.add_get(path, self._stream)
        router.add_post(TRANSCRIPTIONS_PATH, self._transcribe)

    def describe(self) -> str:
        return f"ws://{self.host}:{self.port}/ (transcriptions at {TRANSCRIPTIONS_PATH})"

    # --- the bots' streaming protocol ---------------------------------------------------------
    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self.not_ready()) is not None:
            return refusal
        # Raw PCM does not compress, so no permessage-deflate; frames over max_frame_bytes get an
        # error message from the session, ones over four times that a 1009 close.
        socket = web.WebSocketResponse(heartbeat=PING_INTERVAL_S, compress=False,
                                       max_msg_size=self.max_frame_bytes * 4)
        if not socket.can_prepare(request).ok:
            return error_response(426, "this path takes WebSocket connections (the ASR streaming protocol)",
                                  headers={"Upgrade": "websocket"})
        await socket.prepare(request)
        peer = "{}:{}".format(*(request.transport.get_extra_info("peername") or ("?", 0))[:2])
        if not self.count.take():
            logger.warning(f"{peer}: refused, {self.max_sessions} sessions already open")
            self.count_error("too_many_sessions")
            await socket.send_str(protocol.error_message(
                f"too many sessions: the server is limited to {self.max_sessions}; try again later"))
            await socket.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"too many sessions")
            return socket
        try:
            await self._serve(socket, peer)
        finally:
            self.count.release()
        return socket

    async def _serve(self, socket: web.WebSocketResponse, peer: str) -> None:
        session = Session(self.engine, self.max_frame_bytes, peer, self.metrics)
        self.sessions.add(session)
        self.sockets.add(socket)
        writer = session.writer = asyncio.create_task(self._write(socket, session))
        logger.debug(f"{peer}: session {session.stream_id} opened")
        try:
            await socket.send_str(protocol.ready_message())
            async for message in socket:
                if message.type is WSMsgType.BINARY:
                    session.on_binary(message.data)
                elif message.type is WSMsgType.TEXT:
                    session.on_text(message.data)
        except ConnectionError:
            pass
        finally:
            self.sessions.discard(session)
            self.sockets.discard(socket)
            session.close()
            await asyncio.gather(writer, return_exceptions=True)
            logger.debug(f"{peer}: session {session.stream_id} closed")

    @staticmethod
    async def _write(socket: web.WebSocketResponse, session: Session) -> None:
        while (message := await session.outbox.get()) is not None:
            try:
                await socket.send_str(message)
            except (ConnectionError, RuntimeError):
                return

    # --- OpenAI's transcriptions --------------------------------------------------------------
    async def _transcribe(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self.not_ready()) is not None:
            return refusal
        if not self.count.take():
            self.count_error("too_many_sessions")
            return error_response(429, f"too many sessions (limit {self.max_sessions}); try again later",
                                  headers={"Retry-After": "1"})
        try:
            return await self._transcribe_upload(request)
        finally:
            self.count.release()

    async def _transcribe_upload(self, request: web.Request) -> web.StreamResponse:
        try:
            upload = await read_upload(request)
        except BadUpload as exc:
            return error_response(400, str(exc))
        self.metrics.audio(len(upload.audio))
        started = time.perf_counter()
        transcription = Transcription(self.engine, upload)
        self.transcriptions.add(transcription)
        try:
            if upload.stream:
                return await self._stream_deltas(request, transcription)
            await transcription.text()
            if transcription.error:
                self.count_error("engine")
                return error_response(503 if self.closing else 500, transcription.error)
            body, content_type = transcripts.render(upload.response_format, transcription.timeline,
                                                    upload.duration_s, upload.granularities)
            return web.Response(text=body, content_type=content_type)
        finally:
            transcription.close()
            self.transcriptions.discard(transcription)
            self.metrics.transcription_seconds.observe(time.perf_counter() - started)

    async def _stream_deltas(self, request: web.Request, transcription: Transcription) -> web.StreamResponse:
        """Server-sent events as OpenAI streams a transcript: deltas, then the whole text."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        while (delta := await transcription.deltas.get()) is not None:
            await response.write(transcripts.sse_event({"type": "transcript.text.delta", "delta": delta}))
        if transcription.error:
            self.count_error("engine")
            await response.write(transcripts.sse_event({"type": "error", "error": {
                "message": transcription.error, "code": 500}}))
        else:
            await response.write(transcripts.sse_event({"type": "transcript.text.done",
                                                        "text": transcription.timeline.text}))
        await response.write_eof()
        return response

    # --- shutdown -----------------------------------------------------------------------------
    async def drain(self, timeout_s: float) -> None:
        """Stop taking connections, give open sessions their final transcripts, then close them."""
        self.closing = True
        busy = [asyncio.ensure_future(t.done.wait()) for t in self.transcriptions]
        sessions = list(self.sessions)
        if sessions or busy:
            logger.info(f"finishing {len(sessions)} open session(s) and {len(busy)} transcription(s)")
            await asyncio.wait([*busy, *(asyncio.ensure_future(s.drain(timeout_s)) for s in sessions)],
                               timeout=timeout_s)
            for session in sessions:  # let the writers flush the final transcripts
                session.outbox.put_nowait(None)
            if sessions:
                await asyncio.wait([s.writer for s in sessions], timeout=timeout_s)
        await self.close()

    async def close(self) -> None:
        self.closing = True
        await asyncio.gather(*(socket.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
                               for socket in list(self.sockets)), return_exceptions=True)
        await self.cleanup()
