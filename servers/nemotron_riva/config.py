"""Settings of ``nemotron-riva`` (the ``[riva]`` table of nemotron.toml, ``NEMOTRON_RIVA_*``, flags)."""

from __future__ import annotations

from dataclasses import dataclass

from nemotron_common import ports
from nemotron_common.config import port_number, positive, setting


@dataclass
class RivaConfig:
    host: str = setting("127.0.0.1", "address to bind")
    port: int = setting(ports.RIVA, "gRPC port (Riva's)", check=port_number)
    asr_url: str = setting(f"ws://127.0.0.1:{ports.ASR}/", "the ASR server's WebSocket")
    tts_url: str = setting(f"ws://127.0.0.1:{ports.TTS}/ws/tts/stream", "the TTS server's WebSocket")
    api_key_file: str = setting("", "file with the API key: required of gRPC clients (metadata "
                                "authorization: Bearer KEY) and sent to ASR and TTS (default: the unit's "
                                "api-key credential, if it loads one; else none)")
    endpoint_ms: int = setting(800, "streaming recognition: audio without a new word after which the "
                               "utterance is final (a client's endpointing_config.stop_history overrides)",
                               check=positive)
    upstream_timeout: float = setting(120.0, "seconds to wait for ASR and TTS to be ready at start",
                                      check=positive)
    drain_timeout: float = setting(10.0, "seconds open calls get to finish on shutdown", check=positive)
    log_level: str = setting("INFO", "log level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    def check(self) -> str | None:
        for name in ("asr_url", "tts_url"):
            if not getattr(self, name).startswith(("ws://", "wss://")):
                return f"{name} = {getattr(self, name)!r}: must be a ws:// or wss:// URL"
        return None
