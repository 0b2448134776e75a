"""End to end in a real (private) systemd: the rendered units, `systemctl start nemotron.target`.

Uses the test venv and tiny models (ASR and Magpie .nemo files, LLM GGUF with the CPU llama-server).
"""

import shutil
import sys
import time
from pathlib import Path

import pytest
from helpers.binaries import llama_server
from helpers.gguf_model import write as write_gguf
from helpers.systemd_box import SystemdBox

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
LLAMA_SERVER = llama_server()
MODELS = "/var/lib/nemotron/models"

if not (Path("/lib/systemd/systemd").exists() and shutil.which("unshare") and shutil.which("nsenter")):
    pytest.skip("needs systemd, util-linux and root", allow_module_level=True)

HEALTH = "import json,sys,urllib.request as u; r=u.urlopen(sys.argv[1], timeout=5); print(r.status)"
# The HTTP status of a GET or of a WebSocket handshake (101 once upgraded), with the key read from
# the file argv[2] when one is given.
STATUS = """import asyncio, sys, urllib.request as u, urllib.error as e
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
headers = {"Authorization": "Bearer " + open(sys.argv[2]).read().strip()} if len(sys.argv) > 2 else {}
async def handshake():
    try:
        async with connect(sys.argv[1], additional_headers=headers, proxy=None):
            return 101
    except InvalidStatus as refused:
        return refused.response.status_code
if sys.argv[1].startswith("ws:"):
    print(asyncio.run(handshake()))
else:
    try:
        print(u.urlopen(u.Request(sys.argv[1], headers=headers), timeout=30).status)
    except e.HTTPError as error:
        print(error.code)
"""


INSTALL = [
    "--profile", "cpu-test", "--venv", str(VENV), "--user", "root",
    "--asr-model", f"{MODELS}/asr.nemo", "--tts-model", f"{MODELS}/tts.nemo",
    "--tts-codec", f"{MODELS}/tts-codec.nemo",
    "--model", f"{MODELS}/tiny-Q8_0.gguf", "--llama-server", str(LLAMA_SERVER),
    "--set", "asr.max_sessions=2", "--set", "asr.max_batch=2", "--set", "tts.max_sessions=2",
    "--set", "asr.workers=2",  # a second transport process: signals, readiness and stop under systemd
    "--set", "llm.ctx_size=512", "--set", "llm.health_interval=1.0", "--api-key", "--riva",
]


@pytest.fixture(scope="module")
def box(tiny_asr_model, tiny_tts_model, tmp_path_factory):
    box = SystemdBox(binds=[VENV, ROOT, Path(LLAMA_SERVER).parent])
    try:
        box.boot()
        models = Path(f"/proc/{box.pid}/root{MODELS}")
        models.mkdir(parents=True)
        shutil.copy(tiny_asr_model, models / "asr.nemo")
        shutil.copy(tiny_tts_model, models / "tts.nemo")
        shutil.copy(tiny_tts_model.with_name(tiny_tts_model.stem + "-codec.nemo"), models / "tts-codec.nemo")
        write_gguf(models / "tiny-Q8_0.gguf")
        started = time.monotonic()
        box.installed = box.run(str(VENV / "bin/nemotron-install"), *INSTALL, timeout=300)
        box.install_s = time.monotonic() - started
        # Drop-ins, as a sysadmin would write them, for where this test's venv and checkout live (the
        # product's venv uses the system Python under /opt): pyenv's interpreter under /root is hidden
        # by ProtectHome=yes, and a checkout under /tmp by PrivateTmp=yes.
        overrides = []
        used = (Path(sys.executable).resolve(), VENV, ROOT, Path(LLAMA_SERVER))
        if any(p.is_relative_to("/root") for p in used):
            overrides.append("ProtectHome=read-only")
        if any(p.is_relative_to("/tmp") for p in used[1:]):
            overrides += ["PrivateTmp=no", "ReadWritePaths=/tmp"]  # strict makes a shared /tmp read-only
        for unit in ("nemotron-asr", "nemotron-tts", "nemotron-llm", "nemotron-riva"):
            if overrides:
                box.write(f"/etc/systemd/system/{unit}.service.d/test-paths.conf",
                          "[Service]\n" + "\n".join(overrides) + "\n")
        box.run("systemctl", "daemon-reload")
        yield box
    finally:
        box.shutdown()


def test_installer_writes_config_and_enables_the_units(box):
    assert "installed (asr, tts, llm, riva)" in box.installed.stdout
    config = box.run("cat", "/etc/nemotron/nemotron.toml").stdout
    assert f'model = "{MODELS}/asr.nemo"' in config and "max_sessions = 2" in config
    for unit in ("nemotron.target", "nemotron-asr.service", "nemotron-tts.service", "nemotron-llm.service",
                 "nemotron-riva.service"):
        assert box.show(unit, "UnitFileState") == "enabled"
    started = time.monotonic()
    again = box.run(str(VENV / "bin/nemotron-install"), *INSTALL, timeout=120)
    assert again.stdout.count("done already, skipped") == 7 and time.monotonic() - started < 30


def monotonic(box, unit, prop):
    return int(box.show(unit, prop))


def health(box, port):
    return box.run(str(VENV / "bin/python"), "-c", HEALTH, f"http://127.0.0.1:{port}/health", check=False)


def test_start_target_orders_llm_after_asr_and_tts_and_logs_to_the_journal(box):
    box.run("systemctl", "start", "nemotron.target", timeout=240)
    for unit in ("nemotron-asr.service", "nemotron-tts.service", "nemotron-llm.service"):
        assert box.show(unit, "ActiveState") == "active", f"{unit} is not active"
    asr_ready = monotonic(box, "nemotron-asr.service", "ActiveEnterTimestampMonotonic")
    tts_ready = monotonic(box, "nemotron-tts.service", "ActiveEnterTimestampMonotonic")
    llm_started = monotonic(box, "nemotron-llm.service", "ExecMainStartTimestampMonotonic")
    assert 0 < asr_ready < llm_started, f"nemotron-llm started at {llm_started}, ASR ready at {asr_ready}"
    assert 0 < tts_ready < llm_started, f"nemotron-llm started at {llm_started}, TTS ready at {tts_ready}"
    journal = box.run("journalctl", "-u", "nemotron-asr", "--no-pager", "-o", "cat").stdout
    assert "listening on ws://127.0.0.1:8080/" in journal and "ready on cpu" in journal
    assert "nemotron-asr-worker-2 serves port 8080" in journal
    tts_journal = box.run("journalctl", "-u", "nemotron-tts", "--no-pager", "-o", "cat").stdout
    assert "listening on http://127.0.0.1:8001/" in tts_journal and "ready on cpu" in tts_journal
    for port in (8080, 8001, 8000):
        assert health(box, port).stdout.strip() == "200"
    status = box.run(str(VENV / "bin/nemotron-install"), "status").stdout
    assert status.count("active (running)") == 4 and status.count(" 200 ") == 3
    assert status.count("healthy, GPU 0 MiB") == 2 and " memory " in status  # (no memory accounting here)
    riva_ready = monotonic(box, "nemotron-riva.service", "ActiveEnterTimestampMonotonic")
    assert riva_ready > max(asr_ready, tts_ready)  # READY only once both answer


def get_status(box, url, key_file=None):
    args = [key_file] if key_file else []
    return box.run(str(VENV / "bin/python"), "-c", STATUS, url, *args, check=False).stdout.strip()


def test_api_key_from_the_credential_guards_every_service(box):
    """--api-key: one drop-in hands /etc/nemotron/api-key to each service as a credential."""
    key = "/etc/nemotron/api-key"
    assert box.run("stat", "-c", "%a %U", key).stdout.strip() == "600 root"
    secret = box.run("cat", key).stdout.strip()
    for unit in ("nemotron-asr.service", "nemotron-tts.service", "nemotron-llm.service"):
        assert secret not in box.run("systemctl", "show", unit).stdout
        assert "api-key.conf" in box.show(unit, "DropInPaths")
    guarded = {"ws://127.0.0.1:8080/": "101", "http://127.0.0.1:8001/v1/audio/config": "200",
               "http://127.0.0.1:8000/v1/models": "200"}
    for url, allowed in guarded.items():
        assert get_status(box, url) == "401", url
        assert get_status(box, url, key) == allowed, url
    assert "API key required" in box.run("journalctl", "-u", "nemotron-tts", "--no-pager", "-o", "cat").stdout


def test_units_are_hardened_and_the_score_is_recorded(box):
    for unit in ("nemotron-asr.service", "nemotron-tts.service", "nemotron-llm.service"):
        assert box.show(unit, "DevicePolicy") == "closed"
        assert box.show(unit, "IPAddressDeny") and "127.0.0.0/8" in box.show(unit, "IPAddressAllow")
        score = box.run("systemd-analyze", "security", "--no-pager", unit, check=False).stdout.splitlines()
        print(unit, score[-1] if score else "(no score)")  # in CI's log


def test_killed_asr_is_restarted(box):
    before = box.show("nemotron-asr.service", "MainPID")
    box.run("systemctl", "kill", "-s", "KILL", "nemotron-asr.service")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if (box.show("nemotron-asr.service", "NRestarts") == "1"
                and box.show("nemotron-asr.service", "ActiveState") == "active"):
            break
        time.sleep(0.5)
    assert box.show("nemotron-asr.service", "ActiveState") == "active"
    assert box.show("nemotron-asr.service", "MainPID") != before


def test_stop_target_stops_everything_and_leaves_no_process(box):
    box.run("systemctl", "stop", "nemotron.target", timeout=120)
    # The target stops first (it is ordered after its parts); the stops PartOf= propagates run on.
    units = ("nemotron-asr.service", "nemotron-tts.service", "nemotron-llm.service")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(box.show(u, "ActiveState") != "inactive" for u in units):
        time.sleep(0.2)
    for unit in units:
        assert box.show(unit, "ActiveState") == "inactive"
        assert box.show(unit, "MainPID") == "0"
    leftovers = box.run("sh", "-c", "ps -eo comm= | grep -E 'llama-server|nemotron' || true").stdout.strip()
    assert leftovers == ""


def test_bad_config_exits_78_without_a_restart_loop(box):
    box.write("/etc/systemd/system/nemotron-asr.service.d/bad.conf",
              "[Service]\nEnvironment=NEMOTRON_ASR_RIGHT_CONTEXT=5\n")
    box.run("systemctl", "daemon-reload")
    try:
        box.run("systemctl", "start", "nemotron-asr.service", check=False, timeout=60)
        time.sleep(7)  # longer than RestartSec: a restart would have happened by now
        assert box.show("nemotron-asr.service", "ExecMainStatus") == "78"
        assert box.show("nemotron-asr.service", "NRestarts") == "0"
        assert box.show("nemotron-asr.service", "ActiveState") == "failed"
        journal = box.run("journalctl", "-u", "nemotron-asr", "-p", "err", "--no-pager", "-o", "cat").stdout
        assert "right_context = 5: must be one of 0, 1, 6, 13" in journal
    finally:
        box.run("rm", "-f", "/etc/systemd/system/nemotron-asr.service.d/bad.conf")
        box.run("systemctl", "daemon-reload")
        box.run("systemctl", "reset-failed", "nemotron-asr.service", check=False)


def test_a_backend_that_never_gets_ready_fails_at_the_start_timeout(box):
    box.write("/usr/local/bin/never-ready", "#!/bin/sh\nexec sleep 600\n")
    box.run("chmod", "+x", "/usr/local/bin/never-ready")
    box.write("/etc/systemd/system/nemotron-llm.service.d/slow.conf",
              "[Service]\nTimeoutStartSec=4s\nEnvironment=NEMOTRON_LLM_LLAMA_SERVER=/usr/local/bin/never-ready\n")
    box.run("systemctl", "daemon-reload")
    try:
        started = time.monotonic()
        result = box.run("systemctl", "start", "nemotron-llm.service", check=False, timeout=60)
        assert result.returncode != 0
        assert time.monotonic() - started < 30
        assert box.show("nemotron-llm.service", "Result") == "timeout"
        leftovers = box.run("sh", "-c", "ps -eo comm= | grep -E 'sleep|never-ready' || true").stdout.strip()
        assert leftovers == ""
    finally:
        box.run("rm", "-f", "/etc/systemd/system/nemotron-llm.service.d/slow.conf")
        box.run("systemctl", "daemon-reload")
