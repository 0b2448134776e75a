"""The configuration step: /etc/nemotron/nemotron.toml rendered from the options."""

from __future__ import annotations

import shutil

from .lock import Lock
from .options import Options
from .steps import Step


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
