#!/bin/sh
# Bootstrap for a fresh host: `sudo ./install.sh [nemotron-install options]`.
#
# The system Python is externally managed (PEP 668) and sudo's PATH is secure_path, so the installer
# gets its own small venv (click, loguru, sdnotify only) and a link in /usr/local/sbin, which is on
# secure_path: afterwards `sudo nemotron-install` works from anywhere. The checkout is built into a
# wheel under /opt/nemotron/dist, owned by root, and installed from there (never editable): what root
# runs later cannot be changed by editing the checkout, and the application step installs the same
# wheel into the services' venv. Run this again after pulling a new version.
set -eu

main() {
    [ "$(id -u)" -eq 0 ] || exec sudo -- "$0" "$@"
    here=$(cd "$(dirname "$0")" && pwd)
    prefix=/opt/nemotron
    venv=$prefix/installer
    dist=$prefix/dist

    if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        echo ">>> installing python3-venv"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv
    fi
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip setuptools wheel
    echo ">>> building nemotron-stack from $here"
    rm -rf "$dist" && mkdir -p "$dist"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    # Build from a copy, so nothing is written into the (possibly user-owned) checkout.
    (cd "$here" && tar --exclude=./.git --exclude='./.venv*' --exclude=./build -cf - .) | tar -xf - -C "$scratch"
    "$venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
        -w "$dist" "$scratch"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check --force-reinstall "$dist"/nemotron_stack-*.whl
    ln -sf "$venv/bin/nemotron-install" /usr/local/sbin/nemotron-install
    echo ">>> nemotron-install is at /usr/local/sbin/nemotron-install"
    exec /usr/local/sbin/nemotron-install "$@"
}

main "$@"
