"""Riva's ``RivaSpeechSynthesis`` service on top of the TTS server's WebSocket protocol.

``Synthesize`` sends one text as a ``batch`` segment and answers with its whole audio;
``SynthesizeOnline`` sends each request's text as a ``stream`` segment and passes the audio on as it
arrives. Both ride the TTS server's engine with every other client. Voices are the TTS server's
(``aria``), also accepted in Riva's dotted style (``Magpie-Multilingual.EN-US.Aria``).
"""

from __future__ import annotations

import asyncio
import json

import grpc
from nemotron_common.resample import StreamResampler
from riva.client.proto import riva_audio_pb2 as audio
from riva.client.proto import riva_tts_pb2 as tts
from riva.client.proto import riva_tts_pb2_grpc as tts_grpc
from websockets.asyncio.client import connect

from .upstream import Upstream

PCM_ENCODINGS = (audio.AudioEncoding.LINEAR_PCM, audio.AudioEncoding.ENCODING_UNSPECIFIED)


class Synthesis(tts_grpc.RivaSpeechSynthesisServicer):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    @property
    def sample_rate(self) -> int:
        return self.upstream.tts_config["sample_rate"]

    def _problem(self, request: tts.SynthesizeSpeechRequest) -> str | None:
        if request.encoding not in PCM_ENCODINGS:
            return (f"encoding {audio.AudioEncoding.Name(request.encoding)} is not supported: ask for "
                    "LINEAR_PCM")
        if request.sample_rate_hz and not 8000 <= request.sample_rate_hz <= 48000:
            return f"sample_rate_hz {request.sample_rate_hz} is not supported: ask for 8000 to 48000 Hz"
        if request.voice_name and self._voice(request.voice_name) is None:
            voices = self.upstream.tts_config["voices"]
            return f"unknown voice {request.voice_name!r}; valid voices: {', '.join(voices)}"
        return None

    def _resampler(self, request: tts.SynthesizeSpeechRequest) -> StreamResampler | None:
        """Audio comes at the voices' rate; another ``sample_rate_hz`` is resampled on the way."""
        wanted = request.sample_rate_hz or self.sample_rate
        return StreamResampler(self.sample_rate, wanted) if wanted != self.sample_rate else None

    def _voice(self, name: str) -> str | None:
        voice = name.strip().lower().rsplit(".", 1)[-1]
        return voice if voice in self.upstream.tts_config["voices"] else None

    def _init(self, request: tts.SynthesizeSpeechRequest) -> str:
        language = (request.language_code or "en").split("-")[0].lower()
        message = {"type": "init", "language": language}
        if request.voice_name:
            message["voice"] = self._voice(request.voice_name)
        return json.dumps(message)

    async def _open(self, context, request: tts.SynthesizeSpeechRequest):
        await self.upstream.authorize(context)
        if problem := self._problem(request):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            ws = await connect(self.upstream.tts_url, additional_headers=self.upstream.headers, proxy=None,
                               max_size=None)
        except OSError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"the TTS server is not reachable: {exc}")
        await ws.send(self._init(request))
        return ws

    @staticmethod
    async def _until(ws, context, kind: str, audio_out=None) -> dict:
        """Read until a message of ``kind``; audio goes to ``audio_out``; an error aborts the call."""
        async for raw in ws:
            if isinstance(raw, bytes):
                if audio_out is not None:
                    await audio_out(raw)
                continue
            message = json.loads(raw)
            if message["type"] == "error":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message["message"])
            if message["type"] == kind:
                return message
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the TTS server closed the stream")

    async def Synthesize(self, request: tts.SynthesizeSpeechRequest, context) -> tts.SynthesizeSpeechResponse:
        ws = await self._open(context, request)
        pieces: list[bytes] = []

        async def keep(pcm: bytes) -> None:
            pieces.append(pcm)

        try:
            await self._until(ws, context, "stream_created")
            await ws.send(json.dumps({"type": "text", "text": request.text, "mode": "batch"}))
            await ws.send(json.dumps({"type": "close"}))
            await self._until(ws, context, "done", keep)
        finally:
            await ws.close()
        pcm = b"".join(pieces)
        if resampler := self._resampler(request):
            pcm = resampler.chunk(pcm, last=True)
        return tts.SynthesizeSpeechResponse(audio=pcm)

    async def SynthesizeOnline(self, request_iterator, context):
        first = await anext(aiter(request_iterator), None)
        if first is None:
            return
        ws = await self._open(context, first)

        async def send_texts() -> None:
            """Each request's text is one segment, sent as it arrives (an LLM's sentences, say)."""
            request = first
            while request is not None:
                if request.text.strip():
                    await ws.send(json.dumps({"type": "text", "text": request.text, "mode": "stream",
                                              "preset": "balanced"}))
                request = await anext(request_iterator, None)
            await ws.send(json.dumps({"type": "close"}))

        sender = None
        resampler = self._resampler(first)
        try:
            await self._until(ws, context, "stream_created")
            sender = asyncio.create_task(send_texts())
            async for raw in ws:
                if isinstance(raw, bytes):
                    yield tts.SynthesizeSpeechResponse(audio=resampler.chunk(raw) if resampler else raw)
                    continue
                message = json.loads(raw)
                if message["type"] == "error":
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message["message"])
                if message["type"] == "done":
                    if resampler and (tail := resampler.chunk(b"", last=True)):
                        yield tts.SynthesizeSpeechResponse(audio=tail)
                    return
        finally:
            if sender is not None:
                sender.cancel()
            await ws.close()

    async def GetRivaSynthesisConfig(self, request, context) -> tts.RivaSynthesisConfigResponse:
        # Open like health: it names only the models and voices, and Pipecat's NVIDIA services ask
        # for it on the stub without their metadata.
        config = self.upstream.tts_config
        models = []
        for voice in config["voices"]:
            models.append(tts.RivaSynthesisConfigResponse.Config(model_name=voice, parameters={
                "voice_name": voice, "language_code": ",".join(config["languages"]),
                "sample_rate": str(config["sample_rate"]), "subvoices": voice}))
        return tts.RivaSynthesisConfigResponse(model_config=models)
