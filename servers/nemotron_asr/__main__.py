"""``nemotron-asr``: the streaming speech-to-text service."""

from __future__ import annotations

from nemotron_common.entry import command
from nemotron_common.model_files import resolve_model

from .config import ASRConfig


def _service(config: ASRConfig):
    model_path = resolve_model(config.model, config.hf_cache)
    from .service import ASRService

    return ASRService(config, model_path)


main = command(ASRConfig, "asr",
               "Streaming speech-to-text over WebSocket (NeMo cache-aware FastConformer RNN-T).",
               _service)

if __name__ == "__main__":
    main()
