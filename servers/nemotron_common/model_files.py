"""Finding model files: paths, or Hugging Face ids already in a local hub cache (never a download)."""

from __future__ import annotations

from pathlib import Path


def repo_dir(cache: Path, repo_id: str) -> Path:
    """Where the hub cache keeps ``repo_id`` (``models--org--name``)."""
    return cache / ("models--" + repo_id.replace("/", "--"))


def snapshots(repo: Path) -> list[Path]:
    """The snapshot ``refs/main`` names, else every snapshot, newest first."""
    directory = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file() and (directory / ref.read_text().strip()).is_dir():
        return [directory / ref.read_text().strip()]
    if not directory.is_dir():
        return []
    return sorted(directory.glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_model(model: str, hf_cache: str = "") -> Path:
    """The .nemo file to load; raises ValueError with the reason when there is none."""
    path = Path(model).expanduser()
    if path.suffix == ".nemo" or path.is_absolute() or path.exists():
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist")
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ValueError(f"model file {path} cannot be read: {exc.strerror}") from None
        return path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(model, cache_dir=hf_cache or None,
                                          local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        raise ValueError(f"model {model} is not in the local Hugging Face cache "
                         f"({hf_cache or 'default cache'}); download it first") from None
    found = sorted(snapshot.glob("*.nemo"))
    if not found:
        raise ValueError(f"model {model} in the Hugging Face cache has no .nemo file")
    return found[0]
