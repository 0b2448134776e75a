"""The bots' ASR wire protocol (docs/protocol.md), as pure functions: no socket, no model.

Client frames become :class:`Audio`, :class:`Reset` or :class:`ProtocolError`; server messages are
built by the ``*_message`` functions so their shapes live in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

SAMPLE_RATE = 16000
BYTES_PER_SAMPLE = 2


@dataclass(frozen=True)
class Audio:
    pcm: bytes  # whole s16le samples


@dataclass(frozen=True)
class Reset:
    finalize: bool  # True: hard reset (final transcript, new utterance); False: soft (current text)


@dataclass(frozen=True)
class ProtocolError:
    message: str


Event = Audio | Reset | ProtocolError


def parse_text(frame: str) -> Event:
    try:
        message = json.loads(frame)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return ProtocolError("text frames must be JSON objects such as {\"type\":\"reset\"}")
    if not isinstance(message, dict):
        return ProtocolError("text frames must be JSON objects such as {\"type\":\"reset\"}")
    kind = message.get("type")
    if kind not in ("reset", "end"):
        return ProtocolError(f"unknown message type {kind!r}; expected \"reset\" or \"end\"")
    finalize = message.get("finalize", True)
    if not isinstance(finalize, bool):
        return ProtocolError(f"\"finalize\" must be true or false, not {finalize!r}")
    return Reset(finalize=finalize)


class AudioFramer:
    """Checks binary frames and keeps samples whole across frames of odd byte counts."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._carry = b""

    def parse(self, frame: bytes) -> list[Event]:
        if len(frame) > self.max_frame_bytes:
            return [ProtocolError(f"audio frame of {len(frame)} bytes exceeds the limit of "
                                  f"{self.max_frame_bytes} bytes; send smaller frames")]
        data = self._carry + frame
        whole = len(data) - len(data) % BYTES_PER_SAMPLE
        self._carry = data[whole:]
        events: list[Event] = []
        if len(frame) % BYTES_PER_SAMPLE:
            events.append(ProtocolError(
                f"audio frame of {len(frame)} bytes is not a whole number of 16-bit samples; "
                "expected s16le mono PCM (the odd byte is kept for the next frame)"))
        if whole:
            events.insert(0, Audio(data[:whole]))
        return events

    def reset(self) -> None:
        self._carry = b""


def ready_message() -> str:
    return json.dumps({"type": "ready"})


def interim_message(text: str) -> str:
    return json.dumps({"type": "transcript", "text": text, "is_final": False})


def final_message(text: str, finalize: bool, **extras) -> str:
    return json.dumps({"type": "transcript", "text": text, "is_final": True, "finalize": finalize, **extras})


def error_message(message: str) -> str:
    return json.dumps({"type": "error", "message": message})
