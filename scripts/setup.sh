#!/usr/bin/env bash
# Sets up scene3d on a fresh Debian machine: system packages, a virtual environment in .venv,
# the CPU build of PyTorch and scene3d itself (editable) with its test extras. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

# open3d needs libusb at import time; the viewer's browser tests drive Debian's chromium.
apt_packages=()
ldconfig -p 2>/dev/null | grep -q libusb-1.0 || apt_packages+=(libusb-1.0-0)
command -v chromium >/dev/null || apt_packages+=(chromium)
if [ ${#apt_packages[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" = 0 ] || SUDO=sudo
    $SUDO apt-get update -q && $SUDO apt-get install -y -q "${apt_packages[@]}" \
        || echo "could not install ${apt_packages[*]}; the tests that need them will skip"
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=".venv/bin/python -m pip"
# The CPU build of PyTorch; a user with a CUDA build installed keeps theirs.
.venv/bin/python -c "import torch" 2>/dev/null || $PIP install -q torch==2.13.0
$PIP install -q -e ".[test]"
# PlayCanvas splat-transform (npm): an independent reader and writer of every scene format, which the
# tests use to check that other tools open our files. Optional: the tests that need it skip without it.
if [ ! -x .tools/node_modules/.bin/splat-transform ]; then
    if ! command -v npm >/dev/null && [ "$(id -u)" = 0 ]; then
        apt-get install -y -q nodejs npm >/dev/null 2>&1 || true
    fi
    if command -v npm >/dev/null; then
        mkdir -p .tools
        npm install --prefix .tools --no-audit --no-fund --loglevel=error @playcanvas/splat-transform@2.7.1 \
            || echo "splat-transform could not be installed; the tests that use it will skip"
    fi
fi
echo "scene3d is installed in .venv (run .venv/bin/scene3d --help)"
