"""A WebSocket client of /ws/tts/stream written the way the bots use it (the websockets library)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect


@dataclass
class Received:
    """Everything a client got, in order: JSON messages as dicts, audio as bytes."""

    items: list[dict | bytes] = field(default_factory=list)

    def messages(self, kind: str | None = None) -> list[dict]:
        return [m for m in self.items if isinstance(m, dict) and (kind is None or m["type"] == kind)]

    def audio_after(self, index: int = 0) -> bytes:
        return b"".join(m for m in self.items[index:] if isinstance(m, bytes))


class TTSClient:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.got = Received()

    @classmethod
    async def open(cls, url: str) -> TTSClient:
        return cls(await connect(url, max_size=None))

    async def send(self, **message) -> None:
        await self.ws.send(json.dumps(message))

    async def receive(self, timeout: float = 60) -> dict | bytes:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        item = raw if isinstance(raw, bytes) else json.loads(raw)
        self.got.items.append(item)
        return item

    async def until(self, kind: str, timeout: float = 60) -> dict:
        while True:
            item = await self.receive(timeout)
            if isinstance(item, dict) and item["type"] == kind:
                return item

    async def close(self) -> None:
        await self.ws.close()
