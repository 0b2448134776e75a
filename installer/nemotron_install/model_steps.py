"""The models step: each model found in a local Hugging Face cache or downloaded, readable by the
service user."""

from __future__ import annotations

import os
import shutil
import subprocess

from nemotron_common.model_files import repo_dir

from .lock import Lock
from .models import Wanted, candidate_caches, find
from .options import Options
from .steps import Step


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
