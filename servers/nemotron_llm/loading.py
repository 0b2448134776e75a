"""Loading, the part before the backend starts: find the model a mode needs (an explicit path or id
wins, else a search of the Hugging Face cache). The service then starts the backend and polls it."""

from __future__ import annotations

import os
import re
from pathlib import Path

from nemotron_common.model_files import repo_dir, snapshots

from .config import LLMConfig

GGUF_PATTERNS = {"llamacpp-q8": "*Q8_0*.gguf", "llamacpp-q4": "*Q4_K_M*.gguf"}
SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$")


class ModelError(Exception):
    """No usable model; the message says which file and why."""


def hub_cache(config: LLMConfig) -> Path:
    if config.hf_cache:
        return Path(config.hf_cache)
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _readable(path: Path) -> Path:
    if not path.exists():
        raise ModelError(f"model {path} does not exist")
    if path.is_file():
        try:
            with path.open("rb") as f:
                f.read(4)
        except OSError as exc:
            raise ModelError(f"model {path} cannot be read: {exc.strerror}") from None
    elif not os.access(path, os.R_OK | os.X_OK):
        raise ModelError(f"model directory {path} cannot be read")
    return path


def _first_part(files: list[Path]) -> list[Path]:
    """Split GGUFs load from their first part; drop the other parts."""
    return [f for f in files if not SPLIT.search(f.name) or SPLIT.search(f.name).group(1) == "00001"]


def resolve(config: LLMConfig) -> str:
    """A GGUF path (llama.cpp modes) or a model directory or id (vLLM)."""
    explicit = config.model.strip()
    cache = hub_cache(config)
    if config.backend == "vllm":
        if not explicit:
            raise ModelError("vllm mode needs model = a Hugging Face id or a model directory")
        if explicit.startswith(("/", ".", "~")):
            return str(_readable(Path(explicit).expanduser()))
        for snapshot in snapshots(repo_dir(cache, explicit)):
            if (snapshot / "config.json").is_file():
                return str(_readable(snapshot))
        raise ModelError(f"model {explicit} is not in the Hugging Face cache {cache}; download it first")
    pattern = GGUF_PATTERNS[config.mode]
    if explicit and (explicit.endswith(".gguf") or explicit.startswith(("/", ".", "~"))):
        path = Path(explicit).expanduser()
        if path.is_dir():
            found = _first_part(sorted(path.glob(pattern)))
            if not found:
                raise ModelError(f"no {pattern} file in {path}")
            path = found[0]
        return str(_readable(path))
    repos = [repo_dir(cache, explicit)] if explicit else sorted(cache.glob("models--*"))
    for repo in repos:
        for snapshot in snapshots(repo):
            found = _first_part(sorted(snapshot.rglob(pattern)))
            if found:
                return str(_readable(found[0]))
    where = f"{explicit} in {cache}" if explicit else str(cache)
    raise ModelError(f"no {pattern} model found in {where}; set model = PATH or download one")
