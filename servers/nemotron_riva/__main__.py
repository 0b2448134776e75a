"""``nemotron-riva``: NVIDIA Riva's gRPC speech APIs in front of the ASR and TTS servers."""

from __future__ import annotations

from nemotron_common.entry import command

from .config import RivaConfig


def _service(config: RivaConfig):
    from .service import RivaService

    return RivaService(config)


main = command(RivaConfig, "riva",
               "Riva-compatible gRPC (StreamingRecognize, Recognize, Synthesize, SynthesizeOnline) over the "
               "ASR and TTS servers.", _service)

if __name__ == "__main__":
    main()
