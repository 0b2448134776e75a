"""A client that speaks the bots' ASR protocol (docs/protocol.md) with the websockets library."""

from __future__ import annotations

import asyncio
import json

import numpy as np
from websockets.asyncio.client import ClientConnection, connect

FRAME_BYTES = 640  # 20 ms of 16 kHz s16le, as the bots send


def to_pcm(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def pcm_as_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


class ASRClient:
    def __init__(self, connection: ClientConnection) -> None:
        self.ws = connection
        self.messages: list[dict] = []

    @classmethod
    async def open(cls, url: str) -> ASRClient:
        connection = await connect(url, max_size=None, compression=None, proxy=None)
        client = cls(connection)
        first = await client.receive(timeout=5)
        assert first == {"type": "ready"}, first
        return client

    async def receive(self, timeout: float = 30) -> dict:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.messages.append(message)
        return message

    async def send_audio(self, pcm: bytes, frame_bytes: int = FRAME_BYTES, realtime: bool = False) -> None:
        for offset in range(0, len(pcm), frame_bytes):
            await self.ws.send(pcm[offset:offset + frame_bytes])
            if realtime:
                await asyncio.sleep(frame_bytes / 32000)

    async def reset(self, finalize: bool | None = True, kind: str = "reset") -> None:
        message: dict = {"type": kind}
        if finalize is not None:
            message["finalize"] = finalize
        await self.ws.send(json.dumps(message))

    async def until(self, predicate, timeout: float = 60) -> dict:
        while True:
            message = await self.receive(timeout)
            if predicate(message):
                return message

    async def final(self, timeout: float = 60) -> dict:
        return await self.until(lambda m: m.get("type") == "transcript" and m.get("is_final")
                                and m.get("finalize"), timeout)

    async def transcribe(self, pcm: bytes) -> str:
        await self.send_audio(pcm)
        await self.reset()
        return (await self.final())["text"]

    async def close(self) -> None:
        await self.ws.close()
