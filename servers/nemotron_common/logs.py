"""Logging with loguru to stderr: journald-friendly under systemd, human on a terminal.

Under systemd (``JOURNAL_STREAM`` set) each line starts with a ``<N>`` syslog priority and carries no
timestamp, so ``journalctl -p warning -u nemotron-asr`` filters by level and the journal keeps time.
"""

from __future__ import annotations

import logging
import os
import sys

from loguru import logger

SYSLOG_PRIORITY = {"TRACE": 7, "DEBUG": 7, "INFO": 6, "SUCCESS": 5, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _journal_format(record) -> str:
    priority = SYSLOG_PRIORITY.get(record["level"].name, 6)
    text = f"\\<{priority}>{{name}}: {{message}}\n"  # "\<" is a literal "<", not a colour tag
    if record["exception"]:
        text += "{exception}"
    return text


class _InterceptHandler(logging.Handler):
    """Send stdlib logging (NeMo, websockets, uvicorn) through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            try:
                level = logger.level(record.levelname).name
            except ValueError:
                level = record.levelno
            logger.patch(lambda r: r.update(name=record.name)).opt(exception=record.exc_info).log(
                level, record.getMessage())
        except Exception:  # noqa: BLE001 - a logging failure must never break the caller
            self.handleError(record)


def adopt(name: str, level: int = logging.WARNING) -> None:
    """Route a library logger that installs its own handlers (NeMo's) through loguru."""
    library = logging.getLogger(name)
    for handler in list(library.handlers):
        library.removeHandler(handler)
    library.addHandler(_InterceptHandler())
    library.setLevel(level)
    library.propagate = False


def under_journal() -> bool:
    return bool(os.environ.get("JOURNAL_STREAM"))


def setup(level: str = "INFO") -> None:
    logger.remove()
    if under_journal():
        logger.add(sys.stderr, level=level.upper(), format=_journal_format, colorize=False)
    else:
        logger.add(sys.stderr, level=level.upper(), colorize=sys.stderr.isatty(),
                   format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
                          "<cyan>{name}</cyan> {message}")
    logging.basicConfig(handlers=[_InterceptHandler()], level=logging.WARNING, force=True)
    if level.upper() == "DEBUG":
        logging.getLogger("websockets").setLevel(logging.DEBUG)
