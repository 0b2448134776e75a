"""``nemotron-asr``: the streaming speech-to-text service."""

from __future__ import annotations

from pathlib import Path

import click
from nemotron_common.config import click_options
from nemotron_common.entry import serve
from nemotron_common.model_files import resolve_model

from .config import ASRConfig


def _service(config: ASRConfig):
    model_path = resolve_model(config.model, config.hf_cache)
    from .service import ASRService

    return ASRService(config, model_path)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="configuration file [default: /etc/nemotron/nemotron.toml or $NEMOTRON_CONFIG]")
@click_options(ASRConfig)
def main(config_path: Path | None, **flags) -> None:
    """Streaming speech-to-text over WebSocket (NeMo cache-aware FastConformer RNN-T).

    Settings come from the [asr] table of the config file, NEMOTRON_ASR_<SETTING> environment
    variables and these flags, in increasing priority. Exit status 78 means a bad setting.
    """
    serve(ASRConfig, "asr", config_path, flags, _service)


if __name__ == "__main__":
    main()
