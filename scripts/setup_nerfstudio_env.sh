#!/usr/bin/env bash
# Create .venv-ns: nerfstudio 1.1.5 and snap3d[nerfstudio] in an environment of their own
# (with the mobile extra, so that iPhone bundles are made from ns-train runs too).
#
# nerfstudio pins gsplat 1.4.0, numpy<2 and viser 0.2.7, and imports torchvision, so it
# lives apart from the main .venv (CPU torch, viser 1.x). torch and torchvision are
# installed first as a matching pair: PyPI's torchvision fails to import beside a torch
# of another release ("operator torchvision::nms does not exist").
#
# Measured on the 2-core CI machine from an empty pip cache, with other jobs running:
# 5.5 to 8 minutes (1.5 of them CPU) and 8.4 GB (torch 2.14.1 is a CUDA build: 5.5 GB).
#
# Usage: scripts/setup_nerfstudio_env.sh [VENV]   (default .venv-ns; set TORCH_SPEC and
# TORCHVISION_SPEC to pick another pair). Exits 0 with "$VENV ready" on its last line, or
# with the reason on stderr, the log's tail and a half-made environment removed: 2 when
# snap3d[nerfstudio] does not resolve beside the torch pair or the made environment does
# not import (a problem of ours), 1 when it could not be made here (disk, network, no
# such torch pair on the index, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-ns}"
torch_spec="${TORCH_SPEC:-torch==2.14.1}"
torchvision_spec="${TORCHVISION_SPEC:-torchvision==0.29.1}"
log="${NS_SETUP_LOG:-${TMPDIR:-/tmp}/snap3d-nerfstudio-setup.log}"
own_install="pip install -e .[nerfstudio,mobile,dev]"

start=$SECONDS
: > "$log"

# open3d (nerfstudio reads point clouds with it) links the system's libusb-1.0.
if ! ldconfig -p 2> /dev/null | grep -q "libusb-1.0.so.0"; then
    sudo=""
    if [ "$(id -u)" != 0 ] && command -v sudo > /dev/null && sudo -n true 2> /dev/null; then
        sudo="sudo -n"
    fi
    if command -v apt-get > /dev/null && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
        echo "installing libusb-1.0-0 (apt-get) for open3d"
        export DEBIAN_FRONTEND=noninteractive
        $sudo apt-get install -y -qq libusb-1.0-0 >> "$log" 2>&1 \
            || { $sudo apt-get update -qq >> "$log" 2>&1 \
                && $sudo apt-get install -y -qq libusb-1.0-0 >> "$log" 2>&1; } \
            || echo "warning: apt-get could not install libusb-1.0-0 (see $log); open3d will not import" >&2
    else
        echo "warning: libusb-1.0 is missing and apt-get/sudo is not available; install it" \
            "(Debian/Ubuntu: libusb-1.0-0) for open3d, which nerfstudio reads point clouds with" >&2
    fi
fi

step() {  # step WHAT COMMAND...: run, logging; on failure show the log's tail and stop
    local what="$1"
    shift
    echo "  $what"
    echo "== $what" >> "$log"
    if ! "$@" >> "$log" 2>&1; then
        tail -n 25 "$log" >&2
        rm -rf "$venv"
        echo "setup_nerfstudio_env: $what failed (full log: $log)" >&2
        # the venv, pip and the torch pair come from this machine and its package index;
        # once they are in, a conflict in our own install, or an import error, is ours
        if [ "$what" = "import check" ] || { [ "$what" = "$own_install" ] \
            && grep -q -E "ResolutionImpossible|conflicting dependencies" "$log"; }; then
            exit 2
        fi
        exit 1
    fi
}

echo "creating $venv (log: $log)"
rm -rf "$venv"
step "python3 -m venv $venv" python3 -m venv "$venv"
step "pip install --upgrade pip" "$venv/bin/pip" install --upgrade pip
step "pip install $torch_spec $torchvision_spec" \
    "$venv/bin/pip" install "$torch_spec" "$torchvision_spec"
step "$own_install" "$venv/bin/pip" install -e ".[nerfstudio,mobile,dev]"
step "import check" "$venv/bin/python" -c \
    "import nerfstudio, torchvision, gsplat, coremltools, snap3d.methods.nerfstudio_plugin"
echo "$venv ready in $((SECONDS - start)) s, $(du -sh "$venv" | cut -f1)"
