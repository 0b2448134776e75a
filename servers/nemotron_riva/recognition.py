"""Riva's ``RivaSpeechRecognition`` service on top of the ASR server's WebSocket protocol.

Each call opens one ASR session, so gRPC clients share the same engine (and batches) as the bots.
Riva servers decide when an utterance ends; the ASR protocol leaves that to the client. So a
streaming call ends an utterance itself (a hard reset) once it has words and then ``endpoint_ms`` of
audio either is quiet or brings no new words, and the final transcript comes back as a result with
``is_final``.
"""

from __future__ import annotations

import asyncio
import io
import json
import wave

import grpc
import numpy as np
from nemotron_common.resample import StreamResampler
from riva.client.proto import riva_asr_pb2 as asr
from riva.client.proto import riva_asr_pb2_grpc as asr_grpc
from riva.client.proto import riva_audio_pb2 as audio
from websockets.asyncio.client import connect

from .upstream import Upstream

SAMPLE_RATE = 16000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000
FRAME_BYTES = 3200  # 100 ms: how whole-file audio is fed to the ASR session
QUIET_RMS = 0.01 * 32768  # -40 dBFS: below it a chunk counts as a pause
PCM_ENCODINGS = (audio.AudioEncoding.LINEAR_PCM, audio.AudioEncoding.ENCODING_UNSPECIFIED)


def check_config(config: asr.RecognitionConfig) -> str | None:
    """Why the ASR server cannot take audio described by ``config``; None when it can."""
    if config.encoding not in PCM_ENCODINGS:
        return (f"encoding {audio.AudioEncoding.Name(config.encoding)} is not supported: send LINEAR_PCM "
                "(16-bit little-endian)")
    if config.sample_rate_hertz and not 8000 <= config.sample_rate_hertz <= 48000:
        return f"sample_rate_hertz {config.sample_rate_hertz} is not supported: send 8000 to 48000 Hz audio"
    if config.audio_channel_count not in (0, 1):
        return f"audio_channel_count {config.audio_channel_count} is not supported: send mono audio"
    return None


def to_16k(rate: int) -> StreamResampler | None:
    """What brings audio of ``rate`` (0: unspecified) to the ASR server's 16 kHz, chunk by chunk."""
    return StreamResampler(rate, SAMPLE_RATE) if rate and rate != SAMPLE_RATE else None


def pcm_of(data: bytes, rate: int) -> tuple[bytes, str | None]:
    """16 kHz PCM from a WAV file's bytes (any rate) or from raw PCM at ``rate``; the problem, if
    the WAV cannot be taken."""
    if data.startswith(b"RIFF"):
        try:
            with wave.open(io.BytesIO(data)) as wav:
                rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
                data = wav.readframes(wav.getnframes())
        except (wave.Error, EOFError) as exc:
            return b"", f"the audio is not a WAV file the server can read: {exc}"
        if (channels, width) != (1, 2) or not 8000 <= rate <= 48000:
            return b"", (f"WAV of {rate} Hz, {channels} channel(s), {8 * width}-bit: send mono 16-bit "
                         "audio at 8000 to 48000 Hz")
    resampler = to_16k(rate)
    return (resampler.chunk(data, last=True) if resampler else data), None


def _alternative(text: str) -> asr.SpeechRecognitionAlternative:
    return asr.SpeechRecognitionAlternative(transcript=text, confidence=1.0)


class Recognition(asr_grpc.RivaSpeechRecognitionServicer):
    def __init__(self, upstream: Upstream, endpoint_ms: int) -> None:
        self.upstream = upstream
        self.endpoint_ms = endpoint_ms

    async def _session(self, context: grpc.aio.ServicerContext):
        await self.upstream.authorize(context)
        try:
            ws = await connect(self.upstream.asr_url, additional_headers=self.upstream.headers, proxy=None,
                               max_size=None, compression=None)
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the ASR server is not reachable: {exc}")
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            await ws.close()
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the ASR server refused the session: {ready}")
        return ws

    async def Recognize(self, request: asr.RecognizeRequest, context) -> asr.RecognizeResponse:
        if problem := check_config(request.config):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        pcm, problem = pcm_of(request.audio, request.config.sample_rate_hertz)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        ws = await self._session(context)
        try:
            for offset in range(0, len(pcm), FRAME_BYTES):
                await ws.send(pcm[offset:offset + FRAME_BYTES])
            await ws.send(json.dumps({"type": "reset", "finalize": True}))
            async for raw in ws:
                message = json.loads(raw)
                if message.get("type") == "error":
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message["message"])
                if message.get("type") == "transcript" and message.get("finalize") is True:
                    result = asr.SpeechRecognitionResult(alternatives=[_alternative(message["text"])],
                                                         audio_processed=len(pcm) / SAMPLE_RATE / 2)
                    return asr.RecognizeResponse(results=[result])
        finally:
            await ws.close()
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the ASR session ended without a transcript")

    async def GetRivaSpeechRecognitionConfig(self, request, context):
        # Open like health: it names only the models and voices, and Pipecat's NVIDIA services ask
        # for it on the stub without their metadata.
        config = asr.RivaSpeechRecognitionConfigResponse.Config(
            model_name=self.upstream.asr_model,
            parameters={"language_code": "en-US", "sample_rate": str(SAMPLE_RATE), "type": "online",
                        "streaming": "true", "offline": "true"})
        return asr.RivaSpeechRecognitionConfigResponse(model_config=[config])

    async def StreamingRecognize(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None or not first.HasField("streaming_config"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first request must carry streaming_config")
        streaming = first.streaming_config
        if problem := check_config(streaming.config):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        endpoint = streaming.config.endpointing_config
        asked = streaming.config.HasField("endpointing_config") and endpoint.HasField("stop_history")
        endpoint_ms = endpoint.stop_history if asked and endpoint.stop_history > 0 else self.endpoint_ms
        ws = await self._session(context)
        call = _StreamingCall(ws, streaming.interim_results, endpoint_ms * BYTES_PER_MS,
                              to_16k(streaming.config.sample_rate_hertz))
        feeder = asyncio.create_task(call.feed(request_iterator))
        try:
            async for response in call.responses():
                yield response
            await feeder
        finally:
            feeder.cancel()
            await ws.close()
        if call.error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, call.error)


class _StreamingCall:
    """The state of one StreamingRecognize call between its request and its ASR reader."""

    def __init__(self, ws, interim: bool, endpoint_bytes: int, resampler: StreamResampler | None) -> None:
        self.ws, self.interim, self.endpoint_bytes = ws, interim, endpoint_bytes
        self.resampler = resampler  # the client's rate to 16 kHz, or None
        self.fed = 0  # audio bytes sent to ASR
        self.text, self.changed_at = "", 0  # the utterance so far, and how much audio had been fed then
        self.quiet = 0  # bytes of quiet audio at the end of what was fed
        self.unreset = 0  # audio bytes since the last hard reset
        self.finals_due = 0
        self.input_done = False
        self.error: str | None = None
        self.wake = asyncio.Event()

    async def _reset(self) -> None:
        self.finals_due += 1
        self.unreset = self.quiet = 0
        self.text = ""
        await self.ws.send(json.dumps({"type": "reset", "finalize": True}))

    async def feed(self, request_iterator) -> None:
        async for request in request_iterator:
            if not request.audio_content:
                continue
            chunk = request.audio_content
            if self.resampler:
                chunk = self.resampler.chunk(chunk)
                if not chunk:
                    continue  # the resampler holds it until it has enough
            await self.ws.send(chunk)
            self.fed += len(chunk)
            self.unreset += len(chunk)
            samples = np.frombuffer(chunk[:len(chunk) // 2 * 2], dtype="<i2").astype(np.float32)
            quiet = samples.size and np.sqrt(np.mean(samples * samples)) < QUIET_RMS
            self.quiet = self.quiet + len(chunk) if quiet else 0
            pause = max(self.quiet, self.fed - self.changed_at)
            if self.text and pause >= self.endpoint_bytes:
                await self._reset()  # an endpoint: endpoint_ms of quiet audio, or of no new words
        if self.resampler and (tail := self.resampler.chunk(b"", last=True)):
            await self.ws.send(tail)
            self.unreset += len(tail)
        if self.unreset:
            await self._reset()
        self.input_done = True
        self.wake.set()

    async def responses(self):
        reader = asyncio.create_task(self._next())
        while True:
            waker = asyncio.create_task(self.wake.wait())
            await asyncio.wait({reader, waker}, return_when=asyncio.FIRST_COMPLETED)
            waker.cancel()
            self.wake.clear()
            if reader.done():
                raw = reader.result()
                if raw is None:
                    return
                reader = asyncio.create_task(self._next())
                if (response := self._response(json.loads(raw))) is not None:
                    yield response
            if self.input_done and self.finals_due == 0 or self.error:
                reader.cancel()
                return

    async def _next(self):
        try:
            return await self.ws.recv()
        except Exception:  # noqa: BLE001 - a closed session ends the call
            return None

    def _response(self, message: dict) -> asr.StreamingRecognizeResponse | None:
        kind = message.get("type")
        if kind == "error":
            self.error = message.get("message", "ASR error")
            return None
        if kind != "transcript":
            return None
        text = message.get("text", "")
        seconds = self.fed / BYTES_PER_MS / 1000
        if not message.get("is_final"):
            if not self.finals_due and text != self.text:  # (with a reset out, the words are the
                self.text, self.changed_at = text, self.fed  # ended utterance's: not for endpointing)
            return _result(text, False, 0.5, seconds) if self.interim else None
        if message.get("finalize") is True:
            self.finals_due -= 1
            return _result(text, True, 1.0, seconds) if text else None
        return None


def _result(text: str, final: bool, stability: float, seconds: float) -> asr.StreamingRecognizeResponse:
    return asr.StreamingRecognizeResponse(results=[asr.StreamingRecognitionResult(
        alternatives=[_alternative(text)], is_final=final, stability=stability, audio_processed=seconds)])
