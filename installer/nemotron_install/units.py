"""The unit files in ``units/``, rendered with this host's install paths.

The files stay plain systemd units a sysadmin can read; only ``@NAME@`` placeholders (paths, the
service user, the LLM start timeout) are filled in. A placeholder without a value is an error, so a
half-rendered unit never reaches /etc/systemd/system.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # a checkout, when the installer runs from one
# An installed installer carries its units as data files; a checkout has them in units/.
SHARE_DIR = Path(sys.prefix) / "share/nemotron"
DOCS_DIR = SHARE_DIR if (SHARE_DIR / "units").is_dir() and not (REPO_ROOT / "units").is_dir() else REPO_ROOT
UNITS_DIR = DOCS_DIR / "units"
PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
UNIT_NAMES = ("nemotron.target", "nemotron-asr.service", "nemotron-tts.service", "nemotron-llm.service",
              "nemotron-riva.service")


@dataclass(frozen=True)
class UnitValues:
    prefix: Path  # where the project's files (README) live
    venv: Path  # holds bin/nemotron-asr, bin/nemotron-tts, bin/nemotron-llm
    config: Path = Path("/etc/nemotron/nemotron.toml")
    user: str = "nemotron"
    llm_start_timeout: str = "15min"  # vLLM needs ~15 min; llama.cpp would do with ~3
    bind: str = "127.0.0.1"  # the address the services listen on

    def as_dict(self) -> dict[str, str]:
        return {"PREFIX": str(self.prefix), "VENV": str(self.venv), "CONFIG": str(self.config),
                "USER": self.user, "LLM_START_TIMEOUT": self.llm_start_timeout,
                "IP_ADDRESS_ALLOW": "localhost" if is_loopback(self.bind) else "any"}


def is_loopback(address: str) -> bool:
    return address in ("localhost", "::1") or address.startswith("127.")


def render(text: str, values: dict[str, str]) -> str:
    missing = sorted({name for name in PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise KeyError(f"no value for unit placeholder(s) {', '.join('@' + m + '@' for m in missing)}")
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def render_all(values: UnitValues, units_dir: Path = UNITS_DIR) -> dict[str, str]:
    """File name -> rendered text for every unit of the stack."""
    return {name: render((units_dir / name).read_text(), values.as_dict()) for name in UNIT_NAMES}
