#!/usr/bin/env bash
# Set up .venv with the CPU build of PyTorch and this project (editable) with its
# build-time extras. Safe to run again: it only installs what changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
    # Pin the CPU build first: an open `torch` range could pull a multi-GB CUDA build.
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[train,export,dev]"
    rm -f .venv/.setup-*; touch "$stamp"
fi
