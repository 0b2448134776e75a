"""The llama-server the tests run: built by the installer's own llama-cpp step (``tests/run`` does it).

A missing binary fails the tests that need it rather than skipping them: a suite that silently
skips the LLM is not the suite CI is meant to run.
"""

import os
from pathlib import Path

import pytest

VARIABLE = "NEMOTRON_TEST_LLAMA_SERVER"


def llama_server() -> str:
    path = os.environ.get(VARIABLE, "")
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            f"{VARIABLE} must name a llama-server binary (got {path!r}): run ./tests/run, which builds one "
            "with `python -m nemotron_install.llama_build --cpu DIR`",
            pytrace=False,
        )
    return str(Path(path).resolve())
