"""Steps that prepare the system: packages from apt, the service user and its directories."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .lock import Lock
from .options import Options, python_version
from .steps import Command, Step


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
