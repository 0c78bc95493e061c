#!/usr/bin/env bash
# The Triton server's own venv, .venv-triton, for `bisenet serve-triton` and its tests:
# nvidia-pytriton (the real `tritonserver` binary + Python backend), onnxruntime and openvino
# (what runs the model inside it: serve-triton --backend).
# Separate from .venv because nvidia-pytriton wants numpy < 2, and built from the system
# Python (/usr/bin/python3): the Python-backend stub embeds the system's libpython, which
# fails with another build's standard library (e.g. pyenv 3.11.7: '_thread.RLock' object
# has no attribute '_recursion_count'). Needs glibc >= 2.35 on x86_64 (Debian 12, Ubuntu 22.04).
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-triton
stamp=$V/.setup-$(sha256sum scripts/setup_triton.sh | cut -c1-16)   # reinstalls when this script changes
[ -f "$stamp" ] && exit 0
PY=${TRITON_PYTHON:-/usr/bin/python3}
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
glibc=${glibc:-0}
if [ "$(uname -m)" != x86_64 ] || ! printf '2.35\n%s\n' "$glibc" | sort -V -C; then
    echo "setup_triton: nvidia-pytriton needs x86_64 with glibc >= 2.35 (here $(uname -m), glibc $glibc); Triton tests will skip" >&2
    exit 0
fi
if ! "$PY" -c 'import ensurepip, venv' 2>/dev/null; then
    echo "setup_triton: $PY cannot make venvs; install python3-venv (apt-get install python3-venv)" >&2
    exit 1
fi
[ -x $V/bin/python ] || "$PY" -m venv $V
$V/bin/python -m pip install -q --upgrade pip
$V/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "onnxruntime==1.32.0" "openvino==2026.4.1"
rm -f $V/.setup-* $V/.ready; touch "$stamp"
