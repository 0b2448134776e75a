"""The ``/ws/tts/stream`` message contract (docs/protocol.md), as pure functions: no socket, no model.

Client messages are parsed and checked here into a type and fields; the server's messages are built
by the ``*_message`` functions so their shapes live in one place.
"""

from __future__ import annotations

import json

from .interface import MODES, PRESETS, RequestError

MESSAGE_TYPES = ("init", "text", "close", "cancel", "ping")


def parse(raw: str | bytes) -> tuple[str, dict]:
    """A client frame as (type, message); :class:`RequestError` says what is wrong with it."""
    if isinstance(raw, bytes):
        raise RequestError("binary frames are not accepted; send JSON text messages")
    try:
        message = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise RequestError("message is not valid JSON") from None
    if not isinstance(message, dict):
        raise RequestError("message must be a JSON object")
    kind = message.get("type")
    if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
        raise RequestError(f"unknown message type {kind!r}; expected init, text, close, cancel or ping")
    return kind, message


def mode(value: object, field: str, default: str) -> str:
    value = value or default
    if not isinstance(value, str) or value not in MODES:
        raise RequestError(f"unknown {field} {value!r}; expected stream or batch")
    return value


def preset(value: object) -> str:
    value = value or "balanced"
    if not isinstance(value, str) or value not in PRESETS:
        raise RequestError(f"unknown preset {value!r}; expected {', '.join(PRESETS)}")
    return value


def stream_created_message(stream_id: str) -> str:
    return json.dumps({"type": "stream_created", "stream_id": stream_id})


def segment_complete_message(number: int, audio_ms: float) -> str:
    return json.dumps({"type": "segment_complete", "segment": number, "audio_ms": round(audio_ms, 1)})


def done_message(total_audio_ms: float, segments: int) -> str:
    return json.dumps({"type": "done", "total_audio_ms": round(total_audio_ms, 1),
                       "segments_generated": segments})


def pong_message() -> str:
    return json.dumps({"type": "pong"})


def error_message(message: str, fatal: bool = False) -> str:
    return json.dumps({"type": "error", "message": message, "fatal": fatal})
