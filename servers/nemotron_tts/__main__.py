"""``nemotron-tts``: Magpie text-to-speech over HTTP and streaming WebSocket."""

from __future__ import annotations

from nemotron_common.entry import command
from nemotron_common.model_files import resolve_model

from .config import TTSConfig


def _service(config: TTSConfig):
    model_path = resolve_model(config.model, config.hf_cache)
    codec_path = resolve_model(config.codec, config.hf_cache) if config.codec else None
    from .service import TTSService

    return TTSService(config, model_path, codec_path)


main = command(TTSConfig, "tts",
               "Text-to-speech over HTTP (/v1/audio/speech) and streaming WebSocket (/ws/tts/stream).",
               _service)

if __name__ == "__main__":
    main()
