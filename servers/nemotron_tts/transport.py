"""HTTP and WebSocket on one port: ``/v1/audio/speech``, ``/v1/audio/config``, ``/ws/tts/stream``, health.

aiohttp rather than ``websockets`` here: the speech endpoint is a POST with a JSON body, and the
``websockets`` server only parses bodiless GET requests. (aiohttp already ships with NeMo.)
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web
from loguru import logger
from nemotron_common.health import HEALTH_PATHS, Health

from .audio import duration_ms, wav_file
from .catalog import RequestError
from .engine import Job
from .session import StreamSession

if TYPE_CHECKING:
    from .catalog import Catalog
    from .engine import Engine

FORMATS = ("pcm", "wav")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "code": status}}, status=status)


class Transport:
    def __init__(self, health: Health, host: str, port: int, max_sessions: int, max_text_chars: int) -> None:
        self.health = health
        self.host, self.port = host, port
        self.max_sessions = max_sessions
        self.max_text_chars = max_text_chars
        self.engine: Engine | None = None  # set once the model is warm
        self.catalog: Catalog | None = None
        self.sample_rate = 0
        self.sessions: set[StreamSession] = set()
        self.sockets: dict[web.WebSocketResponse, asyncio.Queue] = {}
        self.requests: set[Job] = set()
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=4 * self.max_text_chars + 4096)
        app.router.add_get("/v1/audio/config", self._config)
        app.router.add_post("/v1/audio/speech", self._speech)
        app.router.add_get("/ws/tts/stream", self._stream)
        for path in HEALTH_PATHS:
            app.router.add_get(path, self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        logger.info(f"listening on http://{self.host}:{self.port}/ (WebSocket at /ws/tts/stream)")

    async def _health(self, request: web.Request) -> web.Response:
        status, body = self.health.answer(request.path)
        return web.json_response(body, status=status)

    def _not_ready(self) -> web.Response | None:
        if self.engine is None or not self.health.ready:
            return _error(503, f"not ready: {self.health.state.value}")
        return None

    async def _config(self, _request: web.Request) -> web.Response:
        if (refusal := self._not_ready()) is not None:
            return refusal
        catalog = self.catalog
        return web.json_response({"sample_rate": self.sample_rate, "channels": 1, "encoding": "pcm_s16le",
                                  "voices": list(catalog.voices), "default_voice": catalog.default_voice,
                                  "languages": list(catalog.languages)})

    async def _speech(self, request: web.Request) -> web.Response:
        if (refusal := self._not_ready()) is not None:
            return refusal
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            return _error(400, "body must be a JSON object")
        if not isinstance(body, dict):
            return _error(400, "body must be a JSON object")
        text = body.get("input")
        response_format = body.get("response_format") or "pcm"
        if not isinstance(response_format, str) or response_format not in FORMATS:
            return _error(400, f"unknown response_format {response_format!r}; valid: {', '.join(FORMATS)}")
        speed = body.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, int | float) or speed != 1.0:
            return _error(400, "speed must be 1.0: Magpie has no speaking-rate control")
        try:
            prepared = self.catalog.prepare(text, body.get("voice"), body.get("language"))
        except RequestError as exc:
            return _error(400, str(exc))
        pcm, error = await self._synthesise(prepared)
        if error:
            return _error(500, error)
        headers = {"X-Sample-Rate": str(self.sample_rate), "X-Channels": "1", "X-Encoding": "pcm_s16le",
                   "X-Duration-Ms": f"{duration_ms(len(pcm), self.sample_rate):.1f}"}
        if response_format == "wav":
            body = wav_file(pcm, self.sample_rate)
            return web.Response(body=body, content_type="audio/wav", headers=headers)
        return web.Response(body=pcm, content_type="audio/pcm", headers=headers)

    async def _synthesise(self, prepared) -> tuple[bytes, str | None]:
        loop = asyncio.get_running_loop()
        finished: asyncio.Future = loop.create_future()
        pieces: list[bytes] = []

        def done(_ms: float, error: str | None) -> None:
            loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(error))

        job = Job(prepared.chunks, prepared.speaker, client=object(), on_audio=pieces.append, on_done=done)
        self.requests.add(job)
        self.engine.submit(job)
        try:
            error = await finished
        finally:
            job.cancelled.set()  # no-op when finished; stops the work when the client went away
            self.requests.discard(job)
        return b"".join(pieces), error

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self._not_ready()) is not None:
            return refusal
        if len(self.sessions) >= self.max_sessions:
            return _error(503, f"too many sessions (limit {self.max_sessions})")
        socket = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4 * self.max_text_chars + 4096)
        await socket.prepare(request)
        outbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        session = StreamSession(self.engine, self.catalog, outbox.put_nowait)
        writer = asyncio.ensure_future(self._write(socket, outbox))
        self.sessions.add(session)
        self.sockets[socket] = outbox
        try:
            async for message in socket:
                if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    session.receive(message.data)
        finally:
            session.cancel()
            self.sessions.discard(session)
            self.sockets.pop(socket, None)
            outbox.put_nowait(None)
            await writer
        return socket

    @staticmethod
    async def _write(socket: web.WebSocketResponse, outbox: asyncio.Queue) -> None:
        while (item := await outbox.get()) is not None:
            try:
                if not socket.closed:
                    await (socket.send_bytes(item) if isinstance(item, bytes) else socket.send_str(item))
            except (ConnectionError, RuntimeError):
                pass  # the reader sees the close and ends the session
            finally:
                outbox.task_done()

    async def drain(self, timeout_s: float) -> None:
        """Let every open stream finish what it has queued, then close the sockets."""
        busy = [session.idle.wait() for session in self.sessions if not session.idle.is_set()]
        if busy:
            logger.info(f"waiting up to {timeout_s:g} s for {len(busy)} streams to finish")
            _, pending = await asyncio.wait([asyncio.ensure_future(b) for b in busy], timeout=timeout_s)
            if pending:
                logger.warning(f"{len(pending)} streams did not finish in time; cancelling them")
        for socket, outbox in list(self.sockets.items()):
            try:
                await asyncio.wait_for(outbox.join(), 2.0)  # what was generated still goes out
            except TimeoutError:
                pass
            await socket.close(code=1001, message=b"server shutting down")

    async def close(self) -> None:
        for job in list(self.requests):
            job.cancelled.set()
        for session in list(self.sessions):
            session.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

