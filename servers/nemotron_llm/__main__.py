"""``nemotron-llm``: launch and supervise the LLM backend on port 8000."""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path

import click
from loguru import logger
from nemotron_common import exitcodes, logs
from nemotron_common.access import api_key_path, read_api_key
from nemotron_common.config import ConfigError, click_options, load

from . import engine, loading
from .config import LLMConfig


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="configuration file [default: /etc/nemotron/nemotron.toml or $NEMOTRON_CONFIG]")
@click.option("--print-command", is_flag=True, help="print the backend command line and exit")
@click_options(LLMConfig)
def main(config_path: Path | None, print_command: bool, **flags) -> None:
    """Serve Nemotron-3-Nano through llama.cpp's llama-server or vLLM, supervised.

    Settings come from the [llm] table of the config file, NEMOTRON_LLM_<SETTING> environment
    variables and these flags, in increasing priority. Exit status 78 means a bad setting or model.
    """
    logs.setup()
    try:
        config = load(LLMConfig, "llm", path=config_path, flags=flags)
        model = loading.resolve(config)
        key = read_api_key(config.api_key_file)  # a missing or malformed key file is a bad setting
        key_file = api_key_path(config.api_key_file)
        env = engine.environment(config, key)
    except (ConfigError, loading.ModelError) as exc:
        logger.error(f"configuration error: {exc}")
        sys.exit(exitcodes.CONFIG_ERROR)
    logs.setup(config.log_level)
    argv = engine.command(config, model, key_file)
    if print_command:
        click.echo(shlex.join(argv))
        return
    from nemotron_common.lifecycle import run

    from .service import LLMService

    logger.info(f"access: {'API key required' if key_file else 'no API key'}")
    sys.exit(asyncio.run(run(LLMService(config, argv, env=env), config.stop_timeout)))


if __name__ == "__main__":
    main()
