"""From the options, this host and the lock file to the ordered list of install steps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nemotron_common.model_files import repo_dir

from . import llama_patch
from .host import Host
from .lock import Lock
from .models import Wanted, candidate_caches, find
from .steps import Command, Step
from .units import REPO_ROOT, UNIT_NAMES, UnitValues, render_all

MODES = ("llamacpp-q8", "llamacpp-q4", "vllm")
PROFILES = ("gpu", "cpu-test")
LLM_START_TIMEOUT = {"vllm": "20min", "llamacpp-q8": "5min", "llamacpp-q4": "5min"}


@dataclass(frozen=True)
class Options:
    mode: str = "llamacpp-q8"
    profile: str = "gpu"  # cpu-test: reuse an existing venv and given models, build nothing
    prefix: Path = Path("/opt/nemotron")
    venv: Path | None = None  # default: PREFIX/venv
    user: str = "nemotron"
    asr: bool = True
    tts: bool = True
    llm: bool = True
    bind: str = "127.0.0.1"
    asr_port: int = 8080
    tts_port: int = 8001
    llm_port: int = 8000
    asr_model: str = ""  # path or HF id; default from the lock file
    tts_model: str = ""
    tts_codec: str = ""
    llm_model: str = ""
    llama_server: str = ""  # an existing llama-server binary: skip the llama.cpp build
    torch_source: str = "auto"  # auto: official wheels if they cover the GPU; source: build from the pin
    hf_token_file: Path | None = None
    state_dir: Path = Path("/var/lib/nemotron")
    config_path: Path = Path("/etc/nemotron/nemotron.toml")
    units_dir: Path = Path("/etc/systemd/system")
    extra_config: dict = field(default_factory=dict)  # table -> {setting: value}, for test profiles

    @property
    def venv_dir(self) -> Path:
        return self.venv or self.prefix / "venv"

    @property
    def hf_cache(self) -> Path:
        return self.state_dir / "hf"

    @property
    def llama_server_path(self) -> str:
        return self.llama_server or str(self.prefix / "llama.cpp/bin/llama-server")


def _pip(options: Options, *args: str, env: dict[str, str] | None = None) -> Command:
    python = str(options.venv_dir / "bin/python")
    return Command([python, "-m", "pip", "install", "--progress-bar", "off", *args], env=env or {})


def _constraints(options: Options) -> Path:
    return options.prefix / "constraints.txt"


def system_packages(lock: Lock) -> Step:
    return Step(
        "system-packages",
        "system packages (apt)",
        inputs={"packages": lock.system_packages},
        commands=[
            Command(["apt-get", "update"]),
            Command(
                ["apt-get", "install", "-y", "--no-install-recommends", *lock.system_packages],
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
    )


def venv(options: Options, lock: Lock) -> Step:
    python = f"python{lock.python}"
    return Step(
        "venv",
        f"Python {lock.python} venv at {options.venv_dir}",
        inputs={"python": lock.python, "venv": str(options.venv_dir)},
        commands=[
            Command([python, "-m", "venv", str(options.venv_dir)]),
            _pip(options, "--upgrade", "pip", "wheel", "setuptools"),
        ],
    )


_TORCH_COVERS_GPU = """
import sys, torch
major, minor = {major}, {minor}
archs = torch.cuda.get_arch_list()
print(torch.__version__, "CUDA", torch.version.cuda, archs)
# Kernels built for sm_XY run on sm_XZ with Z >= Y (same major): sm_120 wheels serve a GB10's sm_121.
built = [a.split("_")[1].rstrip("a") for a in archs]
if not any(int(b[:-1]) == major and int(b[-1]) <= minor for b in built):
    sys.exit(f"no kernels for sm_{{major}}{{minor}} in {{archs}}: re-run with --torch-source source")
"""


def _verify_torch(options: Options, host: Host) -> Command:
    major, minor = host.gpu.capability if host.gpu else (0, 0)
    return Command(
        [str(options.venv_dir / "bin/python"), "-c", _TORCH_COVERS_GPU.format(major=major, minor=minor)]
    )


def pytorch(options: Options, host: Host, lock: Lock) -> list[Step]:
    pin = f"torch=={lock.torch_wheels[0].split('==')[1]}" if lock.torch_wheels else "torch"
    freeze = Command(["sh", "-c", f"echo {pin} > {_constraints(options)}"])
    if options.torch_source != "source":
        return [
            Step(
                "pytorch",
                "PyTorch and torchaudio (official CUDA wheels)",
                inputs={"wheels": lock.torch_wheels, "index": lock.torch_index},
                commands=[
                    _pip(options, "--index-url", lock.torch_index, *lock.torch_wheels),
                    _verify_torch(options, host),
                    freeze,
                ],
            )
        ]
    arch = host.gpu.arch_list if host.gpu else ""
    steps = []
    for name in ("torch", "torchaudio"):
        source = lock.sources[name]
        src = options.prefix / "src" / name
        env = {**source.build_env, "TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(host.cores)}
        steps.append(
            Step(
                f"{name}-source",
                f"{name} from source at {source.commit[:12]} for sm {arch}",
                inputs={"commit": source.commit, "env": env},
                commands=[
                    Command(["git", "clone", "--filter=blob:none", source.repo, str(src)]),
                    Command(["git", "-C", str(src), "checkout", source.commit]),
                    Command(["git", "-C", str(src), "submodule", "update", "--init", "--recursive"]),
                    _pip(options, "--no-build-isolation", str(src), env=env),
                ],
            )
        )
    steps[-1].commands += [_verify_torch(options, host), freeze]
    return steps


def nemo(options: Options, lock: Lock) -> Step:
    source = lock.sources["nemo"]
    spec = f"{lock.nemo_spec} @ git+{source.repo}@{source.commit}"
    return Step(
        "nemo",
        f"NeMo at {source.commit[:12]} (ASR and TTS)",
        inputs={"spec": spec},
        commands=[_pip(options, "-c", str(_constraints(options)), spec)],
    )


def vllm(options: Options, host: Host, lock: Lock) -> Step:
    source = lock.sources["vllm"]
    env = {
        **source.build_env,
        "TORCH_CUDA_ARCH_LIST": host.gpu.arch_list if host.gpu else "",
        "MAX_JOBS": str(host.cores),
    }
    # Built against the venv's torch, which the constraints file pins: vLLM cannot swap it out.
    return Step(
        "vllm",
        f"vLLM from source at {source.commit[:12]}",
        inputs={"commit": source.commit, "env": env},
        commands=[
            _pip(
                options,
                "--no-build-isolation",
                "-c",
                str(_constraints(options)),
                f"vllm @ git+{source.repo}@{source.commit}",
                env=env,
            ),
            Command(
                [
                    str(options.venv_dir / "bin/python"),
                    "-c",
                    "import torch, vllm; print('torch', torch.__version__, 'vllm', vllm.__version__)",
                ]
            ),
        ],
    )


def llama_cpp(options: Options, host: Host, lock: Lock) -> Step:
    source = lock.sources["llama_cpp"]
    src, dest = options.prefix / "src/llama.cpp", options.prefix / "llama.cpp"
    arch = host.gpu.cuda_arch if host.gpu else "native"
    flags = [
        *lock.llama_cmake_flags,
        f"-DCMAKE_CUDA_ARCHITECTURES={arch}",
        "-DCMAKE_CUDA_COMPILER=/usr/local/cuda/bin/nvcc",
        f"-DCMAKE_INSTALL_PREFIX={dest}",
    ]
    return Step(
        "llama-cpp",
        f"llama.cpp at {source.commit[:12]} for CUDA arch {arch}, with the server patch",
        inputs={"commit": source.commit, "flags": flags, "targets": lock.llama_targets,
                "patch": llama_patch.FINGERPRINT},
        commands=[
            Command(["sh", "-c", f"[ -d {src}/.git ] || git clone {source.repo} {src}"]),
            Command(["git", "-C", str(src), "checkout", "--force", source.commit]),
            Command(["git", "-C", str(src), "reset", "--hard"]),  # a clean tree for the patch
            Command([sys.executable, "-m", "nemotron_install.llama_patch", str(src)]),
            Command(
                ["cmake", "-S", str(src), "-B", str(src / "build"), "-G", "Ninja", *flags],
            ),
            Command(
                [
                    "cmake",
                    "--build",
                    str(src / "build"),
                    "--target",
                    *lock.llama_targets,
                    "-j",
                    str(host.cores),
                ]
            ),
            Command(["cmake", "--install", str(src / "build")]),
        ],
    )


def application(options: Options) -> Step:
    return Step(
        "application",
        "nemotron-stack servers",
        inputs={"source": str(REPO_ROOT)},
        commands=[
            _pip(options, "-c", str(_constraints(options)), f"{REPO_ROOT}[asr,tts]"),
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
    device = {"device": "cuda"} if options.profile == "gpu" else {}
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
                    "vllm_python": str(options.venv_dir / "bin/python"),
                    **options.extra_config.get("llm", {}),
                },
            )
        )
    return "\n".join(parts)


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
    }
    return [name for name, on in chosen.items() if on]


def units(options: Options) -> Step:
    rendered = render_all(
        UnitValues(
            prefix=REPO_ROOT,
            venv=options.venv_dir,
            config=options.config_path,
            user=options.user,
            llm_start_timeout=LLM_START_TIMEOUT[options.mode],
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
    if options.profile == "cpu-test":
        steps = [service_user(options), cpu_test_application(options)]
    else:
        steps = [
            system_packages(lock),
            service_user(options),
            venv(options, lock),
            *pytorch(options, host, lock),
            nemo(options, lock),
        ]
        if options.llm and options.mode == "vllm":
            steps += [vllm(options, host, lock), triton_ptxas(options)]
        if options.llm and options.mode != "vllm" and not options.llama_server:
            steps.append(llama_cpp(options, host, lock))
        steps.append(application(options))
    steps += [models_step(options, lock), configuration(options, lock), units(options)]
    return steps
