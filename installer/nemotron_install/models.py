"""Finding the models in Hugging Face caches and giving the service its own readable copy.

The services run as their own user with ProtectHome=yes, so a model downloaded into someone's
~/.cache is invisible to them. The installer looks in the usual caches and hard-links (or copies)
what it finds into the service's cache, /var/lib/nemotron/hf, keeping the hub layout so
``HF_HUB_OFFLINE=1`` lookups by id work there.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from nemotron_common.model_files import repo_dir, snapshots


@dataclass(frozen=True)
class Wanted:
    key: str  # asr, tts, tts_codec, llm
    repo_id: str
    pattern: str = "*"  # a file of the snapshot must match, e.g. *Q8_0*.gguf


def candidate_caches(service_cache: Path, environ: dict[str, str] | None = None) -> list[Path]:
    """The service's cache first, then HF_HUB_CACHE, then the invoking user's and root's caches."""
    environ = dict(os.environ) if environ is None else environ
    caches = [service_cache]
    if environ.get("HF_HUB_CACHE"):
        caches.append(Path(environ["HF_HUB_CACHE"]))
    if environ.get("HF_HOME"):
        caches.append(Path(environ["HF_HOME"]) / "hub")
    homes = []
    if environ.get("SUDO_USER"):
        try:
            homes.append(Path(pwd.getpwnam(environ["SUDO_USER"]).pw_dir))
        except KeyError:
            pass
    homes.append(Path.home())
    caches += [home / ".cache/huggingface/hub" for home in homes]
    unique: list[Path] = []
    for cache in caches:
        if cache not in unique:
            unique.append(cache)
    return unique


def find(wanted: Wanted, caches: list[Path]) -> Path | None:
    """The first cache's repo directory whose snapshot (the one the services would load) has a file
    matching the pattern."""
    for cache in caches:
        repo = repo_dir(cache, wanted.repo_id)
        if any(path.exists() for snapshot in snapshots(repo) for path in snapshot.rglob(wanted.pattern)):
            return repo
    return None
