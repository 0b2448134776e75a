"""From the options, this host and the lock file to the ordered list of install steps."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from nemotron_common import ports
from nemotron_common.model_files import repo_dir

from . import llama_build, memory
from .access import api_key_step
from .host import Host
from .llama_source import sha256_of
from .lock import Lock
from .models import Wanted, candidate_caches, find
from .requirements import headline
from .steps import Command, Step
from .units import DOCS_DIR, REPO_ROOT, UNIT_NAMES, UnitValues, render_all

MODES = ("llamacpp-q8", "llamacpp-q4", "vllm")
# gpu: a GPU host. cpu: every step for real with the CPU variants (what CI installs in its systemd
# e2e). cpu-test: reuse an existing venv and given models, build nothing (quick tests).
PROFILES = ("gpu", "cpu", "cpu-test")
LLM_START_TIMEOUT = {"vllm": "20min", "llamacpp-q8": "5min", "llamacpp-q4": "5min"}


@dataclass(frozen=True)
class Options:
    mode: str = "llamacpp-q8"
    profile: str = "gpu"
    prefix: Path = Path("/opt/nemotron")
    venv: Path | None = None  # default: PREFIX/venv
    python: str = ""  # Python version of the venvs; default: the lock's
    user: str = "nemotron"
    asr: bool = True
    tts: bool = True
    llm: bool = True
    riva: bool = False  # the Riva gRPC gateway in front of ASR and TTS
    bind: str = "127.0.0.1"
    api_key: bool = False  # every service requires the key in config_path's folder, api-key
    asr_port: int = ports.ASR
    tts_port: int = ports.TTS
    llm_port: int = ports.LLM
    riva_port: int = ports.RIVA
    asr_model: str = ""  # path or HF id; default from the lock file
    tts_model: str = ""
    tts_codec: str = ""
    llm_model: str = ""
    llama_server: str = ""  # an existing llama-server binary: skip the llama.cpp build
    llama_sdist: Path | None = None  # a local copy of the pinned llama.cpp sdist (offline hosts)
    torch_source: str = "auto"  # auto: the lock's wheels (checked against the GPU); source: build torch
    source: Path = REPO_ROOT  # the nemotron-stack wheel or source tree the application step installs
    hf_token_file: Path | None = None
    state_dir: Path = Path("/var/lib/nemotron")
    config_path: Path = Path("/etc/nemotron/nemotron.toml")
    units_dir: Path = Path("/etc/systemd/system")
    extra_config: dict = field(default_factory=dict)  # table -> {setting: value}, for test profiles

    @property
    def venv_dir(self) -> Path:
        return self.venv or self.prefix / "venv"

    @property
    def vllm_venv_dir(self) -> Path:
        return self.prefix / "vllm-venv"

    @property
    def variant(self) -> str:
        return "gpu" if self.profile == "gpu" else "cpu"

    @property
    def hf_cache(self) -> Path:
        return self.state_dir / "hf"

    @property
    def llama_server_path(self) -> str:
        return self.llama_server or str(self.prefix / "llama.cpp/bin/llama-server")

    @property
    def needs_stack(self) -> bool:
        """The servers' venv: always for ASR and TTS; for the LLM, nemotron-llm itself is in it."""
        return self.asr or self.tts or self.llm


def _pip(venv: Path, *args: str, env: dict[str, str] | None = None) -> Command:
    return Command([str(venv / "bin/python"), "-m", "pip", "install", "--progress-bar", "off", *args],
                   env=env or {})


def python_version(options: Options, lock: Lock) -> str:
    """The venvs' Python: --python, else the lock's."""
    return options.python or lock.python


def system_packages(options: Options, lock: Lock) -> Step:
    packages = lock.system_packages(python_version(options, lock))
    return Step(
        "system-packages",
        "system packages (apt)",
        inputs={"packages": packages},
        commands=[
            Command(["apt-get", "update"]),
            Command(
                ["apt-get", "install", "-y", "--no-install-recommends", *packages],
                env={"DEBIAN_FRONTEND": "noninteractive"},
            ),
        ],
    )


def service_user(options: Options) -> Step:
    dirs = [
        options.state_dir,
        options.state_dir / "models",
        options.hf_cache,
        Path("/var/cache/nemotron"),
        options.config_path.parent,
    ]

    def create(log) -> None:
        if (
            options.user != "root"
            and subprocess.run(["id", "-u", options.user], capture_output=True).returncode
        ):
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--home-dir",
                    str(options.state_dir),
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    options.user,
                ],
                check=True,
            )
            log(f"created system user {options.user}")
        for group in ("video", "render"):  # GPU device nodes belong to these on Ubuntu
            if subprocess.run(["getent", "group", group], capture_output=True).returncode == 0:
                subprocess.run(["usermod", "-aG", group, options.user], check=True)
        for directory in dirs:
            directory.mkdir(parents=True, exist_ok=True)
            if directory != options.config_path.parent:
                shutil.chown(directory, options.user, options.user)
            log(f"directory {directory}")

    return Step(
        "service-user",
        f"service user {options.user} and its directories",
        inputs={"user": options.user, "dirs": [str(d) for d in dirs]},
        action=create,
        action_text=f"create system user {options.user} (groups video, render); "
        f"create {', '.join(map(str, dirs))} owned by it",
        outputs=dirs,
    )


def new_venv(name: str, what: str, venv: Path, python: str) -> Step:
    return Step(
        name,
        f"Python {python} venv for {what} at {venv}",
        inputs={"python": python, "venv": str(venv)},
        commands=[
            Command([f"python{python}", "-m", "venv", "--clear", str(venv)]),
            _pip(venv, "--upgrade", "pip", "wheel", "setuptools"),
        ],
        outputs=[venv / "bin/python"],
    )


_TORCH_COVERS_GPU = """
import sys, torch
major, minor = {major}, {minor}
archs = torch.cuda.get_arch_list()
print(torch.__version__, "CUDA", torch.version.cuda, archs)
# Kernels built for sm_XY run on sm_XZ with Z >= Y (same major): sm_120 wheels serve a GB10's sm_121.
built = [a.split("_")[1].rstrip("af") for a in archs]
if not any(int(b[:-1]) == major and int(b[-1]) <= minor for b in built):
    sys.exit(f"no kernels for sm_{{major}}{{minor}} in {{archs}}: re-run with --torch-source source")
"""


def verify_torch(venv: Path, host: Host) -> Command:
    major, minor = host.gpu.capability if host.gpu else (0, 0)
    return Command([str(venv / "bin/python"), "-c", _TORCH_COVERS_GPU.format(major=major, minor=minor)])


def stack(options: Options, host: Host, lock: Lock) -> list[Step]:
    """The servers' Python packages from the stack lock (torch and NeMo included), hashes required."""
    requirements = lock.requirements_file("stack", options.variant, host.machine)
    venv = options.venv_dir
    wheel_torch_on_gpu = options.variant == "gpu" and options.torch_source != "source"
    check = [verify_torch(venv, host)] if wheel_torch_on_gpu else []
    steps = [
        Step(
            "stack",
            f"PyTorch, NeMo and the servers' libraries from {requirements.name}: {headline(requirements)}",
            inputs={"lock": _digest(requirements)},
            commands=[_pip(venv, "--require-hashes", "--no-deps", "-r", str(requirements)), *check],
        )
    ]
    if options.torch_source == "source":
        src = options.prefix / "src/pytorch"
        arch = host.gpu.arch_list if host.gpu else ""
        env = {**lock.torch.build_env, "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(host.cores)}
        steps.append(
            Step(
                "torch-source",
                f"torch {lock.torch.ref} from source for sm {arch}, over the lock's wheel",
                inputs={"ref": lock.torch.ref, "env": env},
                commands=[
                    Command(["rm", "-rf", str(src)]),
                    Command(["git", "clone", "--depth", "1", "--branch", lock.torch.ref,
                             "--recurse-submodules", "--shallow-submodules", lock.torch.repo, str(src)]),
                    _pip(venv, "--no-build-isolation", "--no-deps", str(src), env=env),
                    verify_torch(venv, host),
                ],
            )
        )
    return steps


def vllm(options: Options, host: Host, lock: Lock) -> list[Step]:
    """vLLM's own venv from its lock: its torch and transformers pins differ from NeMo's."""
    requirements = lock.requirements_file("vllm", options.variant, host.machine)
    venv = options.vllm_venv_dir
    return [
        new_venv("vllm-venv", "vLLM", venv, python_version(options, lock)),
        Step(
            "vllm",
            f"vLLM from {requirements.name}: {headline(requirements)}",
            inputs={"lock": _digest(requirements)},
            commands=[
                _pip(venv, "--require-hashes", "--no-deps", "-r", str(requirements)),
                Command([str(venv / "bin/python"), "-c",
                         "import torch, vllm; print('torch', torch.__version__, 'vllm', vllm.__version__)"]),
            ],
        ),
    ]


def _digest(path: Path) -> str:
    return sha256_of(path)[:16]


def llama_cpp(options: Options, host: Host, lock: Lock) -> Step:
    gpu = host.gpu if options.variant == "gpu" else None
    return llama_build.step(lock, options.prefix, gpu, host.machine, host.cores, sdist=options.llama_sdist)


def source_digest(source: Path) -> str:
    """What identifies the application's code: a wheel's bytes, or a source tree's tracked files."""
    if source.is_file():
        return _digest(source)
    digest = hashlib.sha256()
    for folder in ("servers", "installer", "units"):
        for path in sorted((source / folder).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(source)).encode() + b"\0" + path.read_bytes())
    digest.update((source / "pyproject.toml").read_bytes())
    return digest.hexdigest()[:16]


def application(options: Options) -> Step:
    # Not editable: the services run a copy that a later edit of the source cannot change.
    return Step(
        "application",
        f"nemotron-stack servers from {options.source}",
        inputs={"source": str(options.source), "digest": source_digest(options.source)},
        commands=[
            _pip(options.venv_dir, "--no-deps", "--no-build-isolation", "--force-reinstall",
                 str(options.source)),
            _check_entry_points(options),
        ],
    )


def _check_entry_points(options: Options) -> Command:
    scripts = " ".join(
        str(options.venv_dir / "bin" / n) for n in ("nemotron-asr", "nemotron-tts", "nemotron-llm")
    )
    return Command(["sh", "-c", f"for s in {scripts}; do [ -x $s ] || {{ echo missing $s; exit 1; }}; done"])


def cpu_test_application(options: Options) -> Step:
    return Step(
        "application",
        f"existing venv {options.venv_dir} has the servers",
        inputs={"venv": str(options.venv_dir)},
        commands=[_check_entry_points(options)],
    )


def triton_ptxas(options: Options) -> Step:
    """Triton's bundled ptxas lacks the arch-specific targets; point it at CUDA's (no package edits)."""
    env_file = options.config_path.parent / "environment"

    def write(log) -> None:
        env_file.write_text("TRITON_PTXAS_PATH=/usr/local/cuda/bin/ptxas\n")
        log(f"wrote {env_file}")

    return Step(
        "triton-ptxas",
        "Triton uses CUDA's ptxas",
        inputs={"file": str(env_file)},
        action=write,
        action_text=f"write TRITON_PTXAS_PATH=/usr/local/cuda/bin/ptxas to {env_file}",
    )


def wanted_models(options: Options, lock: Lock) -> list[Wanted]:
    models = lock.models
    wanted = []
    if options.asr and not options.asr_model:
        wanted.append(Wanted("asr", str(models["asr"]), "*.nemo"))
    if options.tts and not options.tts_model:
        wanted += [
            Wanted("tts", str(models["tts"]), "*.nemo"),
            Wanted("tts_codec", str(models["tts_codec"]), "*.nemo"),
        ]
    if options.llm and not options.llm_model:
        if options.mode == "vllm":
            wanted.append(Wanted("llm", str(models["bf16"]), "config.json"))
        else:
            wanted.append(Wanted("llm", str(models["gguf"]), str(models["gguf_patterns"][options.mode])))
    return wanted


def models_step(options: Options, lock: Lock) -> Step:
    wanted = wanted_models(options, lock)

    def fetch(log) -> None:
        caches = candidate_caches(options.hf_cache)
        for item in wanted:
            found = find(item, caches)
            target = repo_dir(options.hf_cache, item.repo_id)
            if found is not None and found != target:
                log(f"{item.repo_id}: found in {found.parent}; linking into {options.hf_cache}")
                target.mkdir(parents=True, exist_ok=True)
                # Merge into what the service cache may already hold: hard links on one filesystem,
                # a copy across filesystems.
                linked = subprocess.run(["cp", "-alf", f"{found}/.", str(target)], capture_output=True)
                if linked.returncode != 0:
                    subprocess.run(["cp", "-af", f"{found}/.", str(target)], check=True)
            elif found is None:
                _download(item, options, log)
            log(f"{item.repo_id}: ready in {options.hf_cache}")
        subprocess.run(["chown", "-R", f"{options.user}:{options.user}", str(options.hf_cache)], check=True)

    names = ", ".join(f"{w.repo_id} ({w.pattern})" for w in wanted) or "none (all given as paths)"
    return Step(
        "models",
        "models in the service's Hugging Face cache",
        inputs={"wanted": [w.repo_id for w in wanted]},
        action=fetch,
        action_text=f"find {names} in the local caches or download them into "
        f"{options.hf_cache}; readable by {options.user}",
    )


def _download(item: Wanted, options: Options, log) -> None:
    hf = shutil.which("hf", path=str(options.venv_dir / "bin")) or shutil.which("hf")
    if hf is None:
        raise ValueError(
            f"{item.repo_id} is not in any local cache and the `hf` tool is missing; "
            f"download it into {options.hf_cache} first"
        )
    env = {"HF_HUB_CACHE": str(options.hf_cache), "HF_HUB_OFFLINE": "0"}
    if options.hf_token_file:
        # The token goes to this one process's environment only: never into units or the config.
        env["HF_TOKEN"] = options.hf_token_file.read_text().strip()
    argv = [hf, "download", item.repo_id, "--cache-dir", str(options.hf_cache)]
    if item.pattern != "*":
        argv += ["--include", item.pattern]
    log(f"$ {' '.join(argv)}")
    result = subprocess.run(argv, env={**os.environ, **env}, capture_output=True, text=True)
    log(result.stdout[-4000:] + result.stderr[-4000:])
    if result.returncode != 0:
        hint = (
            " (gated model: pass --hf-token-file)"
            if "401" in result.stderr or "gated" in result.stderr
            else ""
        )
        raise ValueError(f"download of {item.repo_id} failed{hint}")


def render_config(options: Options, lock: Lock) -> str:
    def table(name: str, values: dict) -> str:
        lines = [f"[{name}]"] + [f"{key} = {_toml(value)}" for key, value in values.items()]
        return "\n".join(lines) + "\n"

    cache = str(options.hf_cache)
    # On a GPU host the servers must not fall back to the CPU when the driver is late: "cuda" makes
    # them wait for the device nodes at boot instead.
    device = {"gpu": {"device": "cuda"}, "cpu": {"device": "cpu"}}.get(options.profile, {})
    parts = [
        "# Written by nemotron-install. A re-run with the same options leaves this file alone; one with\n"
        "# other options rewrites it and keeps the previous file as nemotron.toml.orig.\n"
    ]
    if options.asr:
        parts.append(
            table(
                "asr",
                {
                    "model": options.asr_model or str(lock.models["asr"]),
                    "hf_cache": cache,
                    "host": options.bind,
                    "port": options.asr_port,
                    **device,
                    **options.extra_config.get("asr", {}),
                },
            )
        )
    if options.tts:
        tts = {
            "model": options.tts_model or str(lock.models["tts"]),
            "hf_cache": cache,
            "host": options.bind,
            "port": options.tts_port,
            "codec": options.tts_codec or str(lock.models["tts_codec"]),
            **device,
        }
        parts.append(table("tts", {**tts, **options.extra_config.get("tts", {})}))
    if options.llm:
        parts.append(
            table(
                "llm",
                {
                    "mode": options.mode,
                    # vLLM needs an id; llama.cpp finds the GGUF in hf_cache by itself.
                    "model": options.llm_model or (lock.models["bf16"] if options.mode == "vllm" else ""),
                    "hf_cache": cache,
                    "host": options.bind,
                    "port": options.llm_port,
                    "llama_server": options.llama_server_path,
                    "vllm_python": str(options.vllm_venv_dir / "bin/python"),
                    **options.extra_config.get("llm", {}),
                },
            )
        )
    if options.riva:
        parts.append(table("riva", {"host": options.bind, "port": options.riva_port,
                                    "asr_url": f"ws://{_loopback(options.bind)}:{options.asr_port}/",
                                    "tts_url": f"ws://{_loopback(options.bind)}:{options.tts_port}/ws/tts/stream",
                                    **options.extra_config.get("riva", {})}))
    return "\n".join(parts)


def _loopback(bind: str) -> str:
    """Where the gateway reaches services bound to ``bind`` on this host."""
    return "127.0.0.1" if bind in ("0.0.0.0", "", "::") else f"[{bind}]" if ":" in bind else bind


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def configuration(options: Options, lock: Lock) -> Step:
    text = render_config(options, lock)

    def write(log) -> None:
        path = options.config_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.read_text() != text:
            backup = path.with_suffix(".toml.orig")
            shutil.copy2(path, backup)
            log(f"kept the previous file as {backup}")
        path.write_text(text)
        shutil.chown(path, "root", options.user)
        path.chmod(0o640)
        log(f"wrote {path}")

    return Step(
        "configuration",
        f"settings in {options.config_path}",
        inputs={"text": text},
        action=write,
        action_text=f"write {options.config_path} (the previous one kept as .orig):\n"
        + "\n".join("        " + line for line in text.splitlines()),
    )


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


def build_plan(options: Options, host: Host, lock: Lock) -> list[Step]:
    plan_budget = memory.for_host(options, host)
    options = memory.with_derived_settings(options, plan_budget)
    if options.profile == "cpu-test":
        steps = [service_user(options), cpu_test_application(options)]
    else:
        steps = [system_packages(options, lock), service_user(options)]
        # llama.cpp first: it needs only the system packages, so a rebuilt venv does not rebuild it.
        if options.llm and options.mode != "vllm" and not options.llama_server:
            steps.append(llama_cpp(options, host, lock))
        if options.needs_stack:
            steps += [new_venv("venv", "the servers", options.venv_dir, python_version(options, lock)),
                      *stack(options, host, lock)]
        if options.llm and options.mode == "vllm":
            steps += [*vllm(options, host, lock), triton_ptxas(options)]
        if options.needs_stack:
            steps.append(application(options))
    steps += [models_step(options, lock), configuration(options, lock),
              api_key_step(options.api_key, options.config_path.parent / "api-key", options.units_dir),
              memory.memory_step(options, plan_budget), units(options)]
    return steps
