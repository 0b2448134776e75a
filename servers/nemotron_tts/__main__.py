"""``nemotron-tts``: Magpie text-to-speech over HTTP and streaming WebSocket."""

from __future__ import annotations

from pathlib import Path

import click
from nemotron_common.config import click_options
from nemotron_common.entry import serve
from nemotron_common.model_files import resolve_model

from .config import TTSConfig


def _service(config: TTSConfig):
    model_path = resolve_model(config.model, config.hf_cache)
    codec_path = resolve_model(config.codec, config.hf_cache) if config.codec else None
    from .service import TTSService

    return TTSService(config, model_path, codec_path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="configuration file [default: /etc/nemotron/nemotron.toml or $NEMOTRON_CONFIG]")
@click_options(TTSConfig)
def main(config_path: Path | None, **flags) -> None:
    """Text-to-speech over HTTP (/v1/audio/speech) and streaming WebSocket (/ws/tts/stream).

    Settings come from the [tts] table of the config file, NEMOTRON_TTS_<SETTING> environment
    variables and these flags, in increasing priority. Exit status 78 means a bad setting.
    """
    serve(TTSConfig, "tts", config_path, flags, _service)


if __name__ == "__main__":
    main()
