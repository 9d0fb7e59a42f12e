#!/usr/bin/env bash
# Create .venv-ns: nerfstudio 1.1.5 and snap3d[nerfstudio] in an environment of their own.
#
# nerfstudio pins gsplat 1.4.0, numpy<2 and viser 0.2.7, and imports torchvision, so it
# lives apart from the main .venv (CPU torch, viser 1.x). torch and torchvision are
# installed first as a matching pair: PyPI's torchvision fails to import beside a torch
# of another release ("operator torchvision::nms does not exist").
#
# Usage: scripts/setup_nerfstudio_env.sh [VENV]   (default .venv-ns; set TORCH_SPEC and
# TORCHVISION_SPEC to pick another pair)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-ns}"
torch_spec="${TORCH_SPEC:-torch==2.14.1}"
torchvision_spec="${TORCHVISION_SPEC:-torchvision==0.29.1}"

start=$SECONDS
# open3d (nerfstudio reads point clouds with it) links the system's libusb-1.0.
if ! ldconfig -p | grep -q "libusb-1.0.so.0"; then
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        apt-get install -y -qq libusb-1.0-0 > /dev/null \
            || { apt-get update -qq && apt-get install -y -qq libusb-1.0-0 > /dev/null; }
    else
        echo "note: install libusb-1.0 (Debian/Ubuntu: libusb-1.0-0) for nerfstudio's point clouds" >&2
    fi
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "$torch_spec" "$torchvision_spec"
"$venv/bin/pip" install --quiet -e ".[nerfstudio,dev]"
"$venv/bin/python" -c "import nerfstudio, torchvision, gsplat, snap3d.methods.nerfstudio_plugin"
echo "$venv ready in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1)"
