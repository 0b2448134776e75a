"""The units step: the systemd units rendered with the install's paths, enabled as chosen."""

from __future__ import annotations

import subprocess

from .options import LLM_START_TIMEOUT, Options
from .steps import Step
from .units import DOCS_DIR, UNIT_NAMES, UnitValues, render_all


def selected_units(options: Options) -> list[str]:
    chosen = {
        "nemotron-asr.service": options.asr,
        "nemotron-tts.service": options.tts,
        "nemotron-llm.service": options.llm,
        "nemotron-riva.service": options.riva,
    }
    return [name for name, on in chosen.items() if on]


def units(options: Options) -> Step:
    rendered = render_all(
        UnitValues(
            prefix=DOCS_DIR,
            venv=options.venv_dir,
            config=options.config_path,
            user=options.user,
            llm_start_timeout=LLM_START_TIMEOUT[options.mode],
            bind=options.bind,
        )
    )
    enable = ["nemotron.target", *selected_units(options)]
    disable = [name for name in UNIT_NAMES if name.endswith(".service") and name not in enable]

    def install(log) -> None:
        for name, text in rendered.items():
            (options.units_dir / name).write_text(text)
            log(f"wrote {options.units_dir / name}")
        subprocess.run(["systemctl", "daemon-reload"], check=True)
        subprocess.run(["systemctl", "enable", *enable], check=True)
        if disable:
            subprocess.run(["systemctl", "disable", *disable], check=False)
        log(f"enabled {', '.join(enable)}")

    return Step(
        "units",
        "systemd units",
        inputs={"units": rendered, "enable": enable},
        action=install,
        action_text=f"write {', '.join(rendered)} to {options.units_dir}; systemctl daemon-reload; "
        f"systemctl enable {' '.join(enable)}"
        + (f"; systemctl disable {' '.join(disable)}" if disable else ""),
    )
