"""The ``api-key`` step: one switch that makes every service require an API key.

``nemotron-install --api-key`` keeps (or generates) the key in /etc/nemotron/api-key, readable by
root only, and writes one drop-in that applies to every ``nemotron-*`` service (systemd reads
``nemotron-.service.d/`` for each of them). It hands the key over with ``LoadCredential=``, so the
key never appears in the environment, on a command line or in ``systemctl show``. Without
``--api-key`` the drop-in is removed and the key file kept, so turning it back on keeps the key
clients already have.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from .steps import Step
from .units import is_loopback

DROPIN = Path("nemotron-.service.d/api-key.conf")


def dropin_text(key_file: Path) -> str:
    return (f"# Written by nemotron-install --api-key: every nemotron service requires the key in\n"
            f"# {key_file} as \"Authorization: Bearer KEY\" (health checks stay open).\n"
            f"# Turned off by running nemotron-install without --api-key.\n"
            f"[Service]\nLoadCredential=api-key:{key_file}\n")


def write_new_key(path: Path) -> None:
    """A random key in a file only root can read, created that way (never briefly world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.write(secrets.token_urlsafe(32) + "\n")


def api_key_step(enabled: bool, key_file: Path, units_dir: Path) -> Step:
    dropin = units_dir / DROPIN
    text = dropin_text(key_file)

    def apply(log) -> None:
        if not enabled:
            if dropin.exists():
                dropin.unlink()
                log(f"removed {dropin}: the services take requests without a key ({key_file} kept)")
            return
        if key_file.exists():
            log(f"kept the key in {key_file}")
        else:
            write_new_key(key_file)
            log(f"generated a key in {key_file} (read it with: sudo cat {key_file})")
        dropin.parent.mkdir(parents=True, exist_ok=True)
        dropin.write_text(text)
        log(f"wrote {dropin}")

    if enabled:
        action_text = (f"keep or generate the key in {key_file} (mode 0600); write {dropin}:\n"
                       + "\n".join("        " + line for line in text.splitlines()))
    else:
        action_text = f"remove {dropin} if present (no API key)"
    return Step("api-key", "API key for every service" if enabled else "no API key",
                inputs={"enabled": enabled, "dropin": text if enabled else ""}, action=apply,
                action_text=action_text, outputs=[key_file, dropin] if enabled else [])


def open_to_the_network_warning(bind: str, api_key: bool) -> str | None:
    if is_loopback(bind) or api_key:
        return None
    return (f"warning: the services will listen on {bind} with no API key: anyone who reaches this "
            "host can use them. Add --api-key (clients then send Authorization: Bearer KEY).")
