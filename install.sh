#!/bin/sh
# Bootstrap for a fresh host: `sudo ./install.sh [nemotron-install options]`.
#
# The system Python is externally managed (PEP 668) and sudo's PATH is secure_path, so the installer
# gets its own small venv (click, loguru, sdnotify only) and a link in /usr/local/sbin, which is on
# secure_path: afterwards `sudo nemotron-install` works from anywhere. Then it runs the installer.
# The installer is installed editable: it reads the unit files and the servers from this clone, so
# keep the clone where it is.
set -eu
[ "$(id -u)" -eq 0 ] || exec sudo -- "$0" "$@"
here=$(cd "$(dirname "$0")" && pwd)
venv=/opt/nemotron/installer

if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --disable-pip-version-check -e "$here"
ln -sf "$venv/bin/nemotron-install" /usr/local/sbin/nemotron-install
echo "nemotron-install is at /usr/local/sbin/nemotron-install"
exec /usr/local/sbin/nemotron-install "$@"
