"""TTS's routes on the shared HTTP layer: ``/v1/audio/speech``, ``/v1/audio/config``, ``/ws/tts/stream``."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from aiohttp import WSMsgType, web
from loguru import logger
from nemotron_common.access import Access
from nemotron_common.health import Health
from nemotron_common.http import HttpTransport, error_response
from nemotron_common.resample import StreamResampler

from .audio import ENCODED, duration_ms, encode, wav_file
from .interface import RequestError
from .metrics import TTSMetrics
from .session import StreamSession
from .speech import SpeechRequest, log_broken, streaming_wav_header

if TYPE_CHECKING:
    from .catalog import Catalog
    from .engine import Engine

FORMATS = ("pcm", "wav", *ENCODED)
# Unsent audio one WebSocket may hold: about 12 minutes at 22.05 kHz, far beyond any client that
# plays what it receives, and small next to the server's memory.
MAX_UNSENT_BYTES = 32 * 2**20


class Outbox(asyncio.Queue):
    """What one WebSocket client has yet to be sent, bounded in bytes: a client that stops reading
    while its audio keeps coming loses its stream and its connection, not the server's memory."""

    def __init__(self, limit_bytes: int = MAX_UNSENT_BYTES) -> None:
        super().__init__()
        self.limit_bytes = limit_bytes
        self.unsent = 0
        self.on_overflow = lambda: None

    def push(self, item: str | bytes | None) -> None:
        over = self.unsent > self.limit_bytes
        if item is not None and over:
            return  # already over: the overflow handler has closed the stream
        self.unsent += len(item or b"")
        self.put_nowait(item)
        if not over and self.unsent > self.limit_bytes:
            self.on_overflow()

    def _get(self):
        item = super()._get()
        self.unsent -= len(item or b"")
        return item


class Transport(HttpTransport):
    def __init__(self, health: Health, host: str, port: int, max_sessions: int, max_text_chars: int,
                 idle_timeout_s: float = 10.0, access: Access | None = None, model_id: str = "tts",
                 http_sample_rate: int = 0) -> None:
        self.engine: Engine | None = None  # set once the model is warm
        self.catalog: Catalog | None = None
        self.sample_rate = 0
        self.sessions: set[StreamSession] = set()
        self.sockets: dict[web.WebSocketResponse, Outbox] = {}
        self.requests: set[SpeechRequest] = set()
        metrics = TTSMetrics(lambda: {"sessions": len(self.sessions), "http_requests": len(self.requests),
                                      "queued_segments": self.engine.queued if self.engine else 0})
        super().__init__(health, host, port, access, model_id, metrics,
                         max_body_bytes=4 * max_text_chars + 4096, idle_timeout_s=idle_timeout_s)
        self.http_sample_rate = http_sample_rate  # 0: the model's own
        self.max_sessions = max_sessions
        self.max_text_chars = max_text_chars

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/audio/config", self._config)
        router.add_post("/v1/audio/speech", self._speech)
        router.add_get("/ws/tts/stream", self._stream)

    def describe(self) -> str:
        return f"http://{self.host}:{self.port}/ (WebSocket at /ws/tts/stream)"

    async def _config(self, _request: web.Request) -> web.Response:
        if (refusal := self.not_ready()) is not None:
            return refusal
        catalog = self.catalog
        return web.json_response({"sample_rate": self.sample_rate, "channels": 1, "encoding": "pcm_s16le",
                                  "voices": list(catalog.voices), "default_voice": catalog.default_voice,
                                  "languages": list(catalog.languages)})

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self.not_ready()) is not None:
            return refusal
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError, RecursionError):
            return error_response(400, "body must be a JSON object")
        if not isinstance(body, dict):
            return error_response(400, "body must be a JSON object")
        response_format = body.get("response_format") or "pcm"
        if not isinstance(response_format, str) or response_format not in FORMATS:
            valid = ", ".join(FORMATS)
            return error_response(400, f"unknown response_format {response_format!r}; valid: {valid}")
        speed = body.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, int | float) or speed != 1.0:
            return error_response(400, "speed must be 1.0: Magpie has no speaking-rate control")
        stream = body.get("stream", True)
        if not isinstance(stream, bool):
            return error_response(400, "stream must be true or false")
        try:
            prepared = self.catalog.prepare(body.get("input"), body.get("voice"), body.get("language"))
        except RequestError as exc:
            return error_response(400, str(exc))
        speech = SpeechRequest(prepared, stream, self.metrics)
        self.requests.add(speech)
        self.engine.submit(speech.job)
        try:
            if stream and response_format in ("pcm", "wav"):
                return await self._stream_body(request, speech, response_format)
            return await self._whole_body(speech, response_format)
        finally:
            speech.cancel()
            self.requests.discard(speech)

    @property
    def output_rate(self) -> int:
        """The sample rate of HTTP speech: the model's, unless http_sample_rate asks for another."""
        return self.http_sample_rate or self.sample_rate

    def _resampler(self) -> StreamResampler | None:
        if self.output_rate == self.sample_rate:
            return None
        return StreamResampler(self.sample_rate, self.output_rate)

    def _audio_headers(self) -> dict[str, str]:
        return {"X-Sample-Rate": str(self.output_rate), "X-Channels": "1", "X-Encoding": "pcm_s16le"}

    def _failed(self, speech: SpeechRequest) -> web.Response:
        return error_response(503 if self.closing else 500, speech.error or "no audio")

    async def _whole_body(self, speech: SpeechRequest, response_format: str) -> web.Response:
        """The whole utterance at once (``"stream": false``, or an encoded format), with its length in
        ``X-Duration-Ms``."""
        pcm = await speech.whole()
        if speech.error:
            return self._failed(speech)
        if resampler := self._resampler():
            pcm = resampler.chunk(pcm, last=True)
        headers = self._audio_headers()
        headers["X-Duration-Ms"] = f"{duration_ms(len(pcm), self.output_rate):.1f}"
        if response_format in ENCODED:
            body, content_type = await asyncio.to_thread(encode, pcm, self.output_rate, response_format)
            return web.Response(body=body, content_type=content_type, headers=headers)
        if response_format == "wav":
            pcm = wav_file(pcm, self.output_rate)
        return web.Response(body=pcm, content_type=f"audio/{response_format}", headers=headers)

    async def _stream_body(self, request: web.Request, speech: SpeechRequest, response_format: str):
        piece = await speech.pieces.get()  # the status waits for the first audio or the failure
        if piece is None:
            return self._failed(speech)
        response = web.StreamResponse(headers=self._audio_headers())
        response.content_type = "audio/wav" if response_format == "wav" else "audio/pcm"
        response.enable_chunked_encoding()
        await response.prepare(request)
        if response_format == "wav":
            await response.write(streaming_wav_header(self.output_rate))
        resampler = self._resampler()
        while piece is not None:
            await response.write(resampler.chunk(piece) if resampler else piece)
            piece = await speech.pieces.get()
        if resampler and not speech.error:
            await response.write(resampler.chunk(b"", last=True))
        if speech.error:
            log_broken(speech.error)
            request.transport.abort()  # no terminating chunk: the client sees the body is cut short
            return response
        await response.write_eof()
        return response

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if (refusal := self.not_ready()) is not None:
            return refusal
        if len(self.sessions) >= self.max_sessions:
            self.count_error("too_many_sessions")
            return error_response(503, f"too many sessions (limit {self.max_sessions})")
        socket = web.WebSocketResponse(heartbeat=20.0, max_msg_size=4 * self.max_text_chars + 4096)
        await socket.prepare(request)
        outbox = Outbox()
        session = StreamSession(self.engine, self.catalog, outbox.push, self.metrics)

        def overflow() -> None:
            self.metrics.errors.labels("slow_client").inc()
            session.cancel()
            asyncio.ensure_future(socket.close(code=1008, message=b"client does not read its audio"))

        outbox.on_overflow = overflow
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
            outbox.push(None)
            await writer
        return socket

    @staticmethod
    async def _write(socket: web.WebSocketResponse, outbox: Outbox) -> None:
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
        busy += [speech.finished.wait() for speech in self.requests if not speech.finished.is_set()]
        if busy:
            logger.info(f"waiting up to {timeout_s:g} s for {len(busy)} streams and requests to finish")
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
        self.closing = True
        for speech in list(self.requests):
            speech.cancel()
        for session in list(self.sessions):
            session.cancel()
        await self.cleanup()

