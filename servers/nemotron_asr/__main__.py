"""``nemotron-asr``: the streaming speech-to-text service."""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
from pathlib import Path

import click
from loguru import logger
from nemotron_common import exitcodes, logs
from nemotron_common.config import ConfigError, click_options, load

from .config import ASRConfig, resolve_model


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="configuration file [default: /etc/nemotron/nemotron.toml or $NEMOTRON_CONFIG]")
@click_options(ASRConfig)
def main(config_path: Path | None, **flags) -> None:
    """Streaming speech-to-text over WebSocket (NeMo cache-aware FastConformer RNN-T).

    Settings come from the [asr] table of the config file, NEMOTRON_ASR_<SETTING> environment
    variables and these flags, in increasing priority. Exit status 78 means a bad setting.
    """
    logs.setup()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` dumps every thread's stack
    try:
        config = load(ASRConfig, "asr", path=config_path, flags=flags)
        model_path = resolve_model(config)
    except (ConfigError, ValueError) as exc:
        logger.error(f"configuration error: {exc}")
        sys.exit(exitcodes.CONFIG_ERROR)
    logs.setup(config.log_level)

    from nemotron_common.lifecycle import run

    from .service import ASRService

    sys.exit(asyncio.run(run(ASRService(config, model_path), config.drain_timeout)))


if __name__ == "__main__":
    main()
