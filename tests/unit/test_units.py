"""The rendered unit files pass systemd's own checks."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nemotron_install.units import PLACEHOLDER, UNIT_NAMES, UnitValues, render, render_all

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent  # the test venv has bin/nemotron-asr and bin/nemotron-llm


@pytest.fixture
def rendered(tmp_path):
    units = render_all(UnitValues(prefix=ROOT, venv=VENV))
    for name, text in units.items():
        (tmp_path / name).write_text(text)
    return tmp_path, units


def test_every_placeholder_is_filled(rendered):
    _, units = rendered
    for name, text in units.items():
        assert "@" in (ROOT / "units" / name).read_text()  # the templates do have placeholders ...
        assert not PLACEHOLDER.search(text), name  # ... and none survives rendering
    with pytest.raises(KeyError, match="@VENV@"):
        render("ExecStart=@VENV@/bin/x", {})


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
def test_units_pass_systemd_analyze_verify_silently(rendered):
    directory, _ = rendered
    result = subprocess.run(["systemd-analyze", "verify", *UNIT_NAMES], cwd=directory, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == "", result.stderr


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")
@pytest.mark.parametrize("unit", ["nemotron-asr.service", "nemotron-tts.service", "nemotron-llm.service"])
def test_security_exposure_stays_low(rendered, unit):
    directory, _ = rendered
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", unit], cwd=directory,
                            capture_output=True, text=True, timeout=60)
    score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout).group(1))
    assert score <= 4.0, result.stdout[-2000:]  # README records the current score


def test_the_contract_directives(rendered):
    _, units = rendered
    asr, tts, llm = (units[f"nemotron-{name}.service"] for name in ("asr", "tts", "llm"))
    for text in (asr, tts, llm):
        for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "RestartPreventExitStatus=78",
                     "KillMode=mixed", "PartOf=nemotron.target", "WantedBy=nemotron.target",
                     "Environment=PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True", "User=nemotron"):
            assert line in text.splitlines()
        directives = [line for line in text.splitlines() if not line.startswith("#")]
        assert not any(line.startswith(("PrivateDevices", "MemoryDenyWriteExecute", "ProcSubset"))
                       for line in directives)  # each breaks CUDA or PyTorch
    after = next(line for line in llm.splitlines() if line.startswith("After="))
    assert "nemotron-asr.service" in after and "nemotron-tts.service" in after
    assert not any(line.startswith(("Requires=", "Wants=")) for line in llm.splitlines())
    assert f"ExecStart={VENV}/bin/nemotron-asr --config /etc/nemotron/nemotron.toml" in asr


def test_the_wheel_ships_every_unit():
    """An installed installer renders its units from the wheel's data files: a unit missing there
    fails the install on a host (it did once, for nemotron-riva.service)."""
    import tomllib

    from nemotron_install.units import UNIT_NAMES

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["data-files"]["share/nemotron/units"]
    assert sorted(shipped) == sorted(f"units/{name}" for name in UNIT_NAMES)
