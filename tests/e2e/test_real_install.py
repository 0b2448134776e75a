"""The real install, end to end, in a private systemd: `install.sh --profile cpu` runs every step.

Nothing is reused from the test run: system packages (apt), the service user, a venv from the stack
lock's CPU variant, llama.cpp built from the pinned sdist by the llama-cpp step, the application
installed from the wheel install.sh builds, tiny models found by the models step in root's Hugging
Face cache under the lock's own model ids, configuration and units. Then `systemctl start
nemotron.target` must reach READY on all three services. Only the CUDA-specific parts differ from a
GPU host's install (the CPU torch build, llama.cpp without CUDA, `device = "cpu"`).

The installer runs with the host's network (it downloads from PyPI and apt); the services run in
the box's own network namespace. Each step's time goes to CI's output.
"""

import shutil
import time
from pathlib import Path

import pytest
from helpers.gguf_model import write as write_gguf
from helpers.systemd_box import SystemdBox
from nemotron_install.lock import load_lock

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3000)]
ROOT = Path(__file__).resolve().parents[2]
LOCK = load_lock()
HF = "/root/.cache/huggingface/hub"
SERVICES = ("nemotron-asr.service", "nemotron-tts.service", "nemotron-llm.service")
# A root login shell's environment, not the test run's (whose PATH leads to pyenv under /root).
AS_ROOT = ["env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root",
           "LANG=C.UTF-8"]
HEALTH = "import sys,urllib.request as u; print(u.urlopen(sys.argv[1], timeout=5).status)"
INSTALL = [
    "--profile", "cpu", "--python", "3.11",  # Debian 12's own Python, as a CI machine has it
    "--set", "asr.max_sessions=2", "--set", "asr.max_batch=2", "--set", "tts.max_sessions=2",
    "--set", "llm.ctx_size=512", "--set", "llm.health_interval=1.0",
]

if not (Path("/lib/systemd/system").exists() and shutil.which("unshare") and shutil.which("nsenter")):
    pytest.fail("the real install needs systemd, util-linux and root", pytrace=False)


def put_in_hub(box: SystemdBox, repo_id: str, name: str, source: Path | None = None) -> Path:
    """A model in root's Hugging Face cache, laid out as the hub leaves it."""
    repo = Path(f"/proc/{box.pid}/root{HF}/models--{repo_id.replace('/', '--')}")
    snapshot = repo / "snapshots/0000000000000000000000000000000000000000"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs/main").write_text(snapshot.name)
    if source is not None:
        shutil.copy(source, snapshot / name)
    return snapshot / name


def report(config: pytest.Config, title: str, output: str) -> None:
    """Into CI's log, past pytest's capture: the installer's per-step lines and times."""
    lines = [line for line in output.splitlines() if line.startswith(("[", "finished", "host", ">>>"))]
    with config.pluginmanager.getplugin("capturemanager").global_and_fixture_disabled():
        print(f"\n--- {title} ---", *lines, sep="\n", flush=True)


@pytest.fixture(scope="module")
def box(tiny_asr_model, tiny_tts_model, pytestconfig):
    box = SystemdBox(binds=[ROOT])
    try:
        box.boot()
        models = LOCK.models
        put_in_hub(box, str(models["asr"]), "model.nemo", tiny_asr_model)
        put_in_hub(box, str(models["tts"]), "model.nemo", tiny_tts_model)
        put_in_hub(box, str(models["tts_codec"]), "codec.nemo",
                   tiny_tts_model.with_name(tiny_tts_model.stem + "-codec.nemo"))
        write_gguf(put_in_hub(box, str(models["gguf"]), "Nemotron-3-Nano-30B-A3B-Q8_0.gguf"))
        started = time.monotonic()
        box.installed = box.run(*AS_ROOT, "sh", str(ROOT / "install.sh"), *INSTALL, timeout=2400, check=False,
                                host_network=True)
        box.install_s = time.monotonic() - started
        report(pytestconfig, f"real install (--profile cpu), {box.install_s:.0f} s", box.installed.stdout)
        assert box.installed.returncode == 0, box.installed.stdout[-3000:] + box.installed.stderr[-3000:]
        yield box
    finally:
        box.shutdown()


def test_every_step_ran_for_real(box):
    out = box.installed.stdout
    for step in ("system-packages", "service-user", "venv", "stack", "llama-cpp", "application", "models",
                 "configuration", "units"):
        assert f"] {step}: " in out and f"{step}: done already" not in out, step
    assert "installed (asr, tts, llm)" in out
    assert box.run("id", "-u", "nemotron").returncode == 0
    freeze = box.run("/opt/nemotron/venv/bin/python", "-m", "pip", "freeze").stdout
    stack = (ROOT / "installer/nemotron_install/locks/stack-cpu-x86_64.txt").read_text()
    for pin in ("torch==", "nemo-toolkit==", "websockets=="):
        locked = next(line.split()[0] for line in stack.splitlines() if line.lower().startswith(pin))
        assert locked.lower() in freeze.lower().replace("_", "-")
    assert "nemotron-stack @ file://" not in freeze or "editable" not in freeze  # a copy, not the checkout
    server = "/opt/nemotron/llama.cpp/bin/llama-server"
    assert box.run(server, "--version", check=False).returncode == 0
    config = box.run("cat", "/etc/nemotron/nemotron.toml").stdout
    assert f'model = "{LOCK.models["asr"]}"' in config and 'device = "cpu"' in config
    assert box.run("test", "-f", f"/var/lib/nemotron/hf/models--{str(LOCK.models['gguf']).replace('/', '--')}"
                   "/snapshots/0000000000000000000000000000000000000000/Nemotron-3-Nano-30B-A3B-Q8_0.gguf",
                   check=False).returncode == 0


def test_the_target_starts_with_all_three_ready(box, pytestconfig):
    started = time.monotonic()
    box.run("systemctl", "start", "nemotron.target", timeout=300)
    ready_s = time.monotonic() - started
    for unit in SERVICES:
        state = f"{box.show(unit, 'ActiveState')} ({box.show(unit, 'SubState')})"
        journal = box.run("journalctl", "-u", unit, "--no-pager", "-o", "cat", "-n", "40").stdout
        assert state == "active (running)", f"{unit}: {state}\n{journal}"
    for port in (8080, 8001, 8000):
        answer = box.run("/opt/nemotron/venv/bin/python", "-c", HEALTH, f"http://127.0.0.1:{port}/health",
                         check=False)
        assert answer.stdout.strip() == "200", (port, answer.stderr[-500:])
    users = {box.show(unit, "User") for unit in SERVICES}
    assert users == {"nemotron"}
    report(pytestconfig, f"systemctl start nemotron.target, {ready_s:.0f} s",
           "[ready] " + ", ".join(f"{unit} active (running)" for unit in SERVICES)
           + "; /health 200 on 8080, 8001 and 8000; running as nemotron")


def test_a_second_run_is_a_no_op_in_seconds(box, pytestconfig):
    started = time.monotonic()
    again = box.run(*AS_ROOT, "nemotron-install", *INSTALL, timeout=300, host_network=True)
    elapsed = time.monotonic() - started
    report(pytestconfig, f"second run, {elapsed:.1f} s", again.stdout)
    assert again.stdout.count("done already, skipped") == 11 and elapsed < 60


def test_a_deleted_venv_is_rebuilt(box, pytestconfig):
    box.run("systemctl", "stop", "nemotron.target", timeout=120)
    box.run("rm", "-rf", "/opt/nemotron/venv")
    again = box.run(*AS_ROOT, "nemotron-install", *INSTALL, timeout=900, host_network=True)
    report(pytestconfig, "after deleting the venv", again.stdout)
    assert "venv: done already" not in again.stdout and "] venv: " in again.stdout
    assert "llama-cpp: done already" in again.stdout  # steps before it stay done
    assert box.run("test", "-x", "/opt/nemotron/venv/bin/nemotron-asr", check=False).returncode == 0
