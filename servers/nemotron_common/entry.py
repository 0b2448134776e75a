"""What every model server's command does between parsing flags and exiting."""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import click
from loguru import logger

from . import exitcodes, logs
from .config import ConfigError, click_options, load


def serve(schema: type, table: str, config_path: Path | None, flags: dict, make_server: Callable) -> NoReturn:
    """Load settings, build the server (``make_server(config)``), run its lifecycle and exit.

    A bad setting, or a ``ValueError`` from ``make_server`` (a missing model), exits 78 with one line.
    """
    logs.setup()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` dumps every thread's stack
    try:
        config = load(schema, table, path=config_path, flags=flags)
        server = make_server(config)
    except (ConfigError, ValueError) as exc:
        logger.error(f"configuration error: {exc}")
        sys.exit(exitcodes.CONFIG_ERROR)
    logs.setup(config.log_level)

    from .lifecycle import run

    sys.exit(asyncio.run(run(server, config.drain_timeout)))


def command(schema: type, table: str, summary: str, make_server: Callable) -> click.Command:
    """The click command of a server: ``--config`` plus one flag per setting of ``schema``."""
    env = table.upper()

    @click.command(context_settings={"help_option_names": ["-h", "--help"]},
                   help=f"{summary}\n\nSettings come from the [{table}] table of the config file, "
                        f"NEMOTRON_{env}_<SETTING> environment variables and these flags, in increasing "
                        "priority. Exit status 78 means a bad setting.")
    @click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="configuration file [default: /etc/nemotron/nemotron.toml or $NEMOTRON_CONFIG]")
    @click_options(schema)
    def main(config_path: Path | None, **flags) -> None:
        serve(schema, table, config_path, flags, make_server)

    return main
