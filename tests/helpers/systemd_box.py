"""Boot a private systemd as PID 1 of its own namespaces and drive it with systemctl/journalctl.

The method: a cgroup of our own, then `unshare` into new pid,
mount, uts, ipc, net and cgroup namespaces; an init script builds a throw-away overlay of the host's
root, mounts /proc, /sys, cgroup2, a small /dev, /run and /tmp, installs the units under test, masks
units that touch the machine or are slow, pivots into it and execs systemd. Nothing on the host is
written: the overlay's upper dir is a tmpfs. Teardown signals only the recorded systemd PID and our
own cgroup.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

MASK = """systemd-modules-load.service systemd-timesyncd.service systemd-sysctl.service systemd-udevd.service
systemd-udev-trigger.service systemd-udevd-control.socket systemd-udevd-kernel.socket systemd-udev-settle.service
systemd-binfmt.service proc-sys-fs-binfmt_misc.automount proc-sys-fs-binfmt_misc.mount systemd-random-seed.service
systemd-pstore.service systemd-hwdb-update.service ldconfig.service kmod-static-nodes.service
sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount sys-fs-fuse-connections.mount
dev-hugepages.mount dev-mqueue.mount getty.target console-getty.service systemd-logind.service timers.target
systemd-remount-fs.service systemd-firstboot.service systemd-journal-flush.service systemd-update-utmp.service
systemd-repart.service systemd-boot-system-token.service apt-daily.timer apt-daily-upgrade.timer
e2scrub_reap.service cron.service ssh.service""".split()

INIT = r"""#!/bin/sh
set -eu
W=$1
[ "$(readlink /proc/self/ns/mnt)" != "$(cat "$W/host-mnt")" ] || { echo "same mount namespace" >&2; exit 90; }
[ "$(readlink /proc/self/ns/cgroup)" != "$(cat "$W/host-cgroup")" ] || { echo "same cgroup namespace" >&2; exit 91; }
mount -t tmpfs -o mode=755 tmpfs "$W/t"
mkdir -p "$W/t/upper" "$W/t/work" "$W/t/root"
R=$W/t/root
mount -t overlay overlay -o "lowerdir=/,upperdir=$W/t/upper,workdir=$W/t/work" "$R"
mount -t proc proc "$R/proc"
mount --bind "$R/proc/sys" "$R/proc/sys" && mount -o remount,bind,ro "$R/proc/sys"
mount -t sysfs -o ro sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
for d in null zero full random urandom tty; do touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"; done
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"
mount -t tmpfs tmpfs "$R/dev/shm"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
for path in $(cat "$W/binds"); do mkdir -p "$R$path"; mount --bind "$path" "$R$path"; done
for unit in "$W"/units/*; do [ -e "$unit" ] && cp "$unit" "$R/etc/systemd/system/"; done
for unit in $(cat "$W/mask"); do ln -sf /dev/null "$R/etc/systemd/system/$unit"; done
for wants in "$R"/etc/systemd/system/*.wants "$R"/etc/systemd/system/*/*.wants; do
  case $wants in *nemotron*) ;; *) rm -rf "$wants" ;; esac
done
printf '[Unit]\nDescription=e2e boot\nRequires=basic.target\nAfter=basic.target\n' > "$R/etc/systemd/system/e2e-boot.target"
mkdir -p "$R/oldroot"
cd "$R"
pivot_root . oldroot
umount -l /oldroot
# Shared propagation, as on a booted host: systemd builds each service's credentials in a namespace of
# its own and moves the mount into /run/credentials, which PID 1 sees only through propagation.
mount --make-rshared /
exec env -i container=nemotron-e2e PATH=/usr/sbin:/usr/bin:/sbin:/bin /lib/systemd/systemd --unit=e2e-boot.target
"""


class SystemdBox:
    def __init__(self, units: dict[str, str] | None = None, binds: list[Path] = ()) -> None:
        """``units``: unit files to install before boot (none when an installer inside writes them);
        ``binds``: host directories the services need (the venv, the checkout), at the same paths."""
        self.work = Path(tempfile.mkdtemp(prefix="nemotron-e2e-", dir="/var/tmp"))
        (self.work / "t").mkdir()
        (self.work / "units").mkdir()
        for name, text in (units or {}).items():
            (self.work / "units" / name).write_text(text)
        (self.work / "mask").write_text("\n".join(MASK))
        (self.work / "binds").write_text("\n".join(str(p) for p in binds))
        (self.work / "init.sh").write_text(INIT)
        (self.work / "host-mnt").write_text(os.readlink("/proc/self/ns/mnt"))
        (self.work / "host-cgroup").write_text(os.readlink("/proc/self/ns/cgroup"))
        self.cgroup = Path(f"/sys/fs/cgroup/unified/nemotron-e2e-{os.getpid()}-{int(time.time())}")
        self.process: subprocess.Popen | None = None
        self.pid: int | None = None

    def boot(self, timeout: float = 60) -> None:
        self.cgroup.mkdir()
        self.process = subprocess.Popen(
            ["setsid", "sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec unshare --fork --pid --mount '
             f'--uts --ipc --net --cgroup --propagation private --kill-child=SIGKILL sh {self.work}/init.sh '
             f'{self.work}'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"private systemd exited: {self.process.stdout.read().decode()[-3000:]}")
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids = children.read_text().split() if children.exists() else []
            if pids and Path(f"/proc/{pids[0]}/root/run/systemd/private").exists():
                self.pid = int(pids[0])
                break
            time.sleep(0.1)
        else:
            raise TimeoutError("private systemd did not come up")
        self.run("systemctl", "is-system-running", "--wait", timeout=timeout, check=False)

    def run(self, *command: str, timeout: float = 120, check: bool = True, input: str | None = None,
            host_network: bool = False):
        """Run inside the box; ``host_network`` keeps the host's network (an installer that downloads),
        everything else (files, processes, systemd) is the box's."""
        namespaces = ["-m", "-u", "-i", "-p", "-C", "-r", "-w"] + ([] if host_network else ["-n"])
        result = subprocess.run(["nsenter", "-t", str(self.pid), *namespaces, *command], capture_output=True,
                                text=True, timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} -> {result.returncode}\n{result.stdout}\n{result.stderr}")
        return result

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-p", prop, "--value", unit).stdout.strip()

    def write(self, path: str, text: str) -> None:
        """Write a file inside the box (into its overlay, through /proc/PID/root)."""
        target = Path(f"/proc/{self.pid}/root{path}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def shutdown(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGRTMIN + 4)  # clean poweroff of the private systemd
            except ProcessLookupError:
                pass
        if self.process:
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                pass
        kill = self.cgroup / "cgroup.kill"
        if kill.exists():
            kill.write_text("1")
        if self.process and self.process.poll() is None:
            self.process.wait(10)
        for directory in sorted(self.cgroup.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if directory.is_dir():
                directory.rmdir()
        if self.cgroup.exists():
            self.cgroup.rmdir()
        shutil.rmtree(self.work, ignore_errors=True)
