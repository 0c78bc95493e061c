#!/usr/bin/env bash
# A separate venv with mmsegmentation 1.2.2 itself, the reference our BiSeNetV1 is tested
# against (tests/training/test_mmseg_parity.py). Separate because mmengine pulls opencv-python,
# which must not sit beside the app's opencv-python-headless. mmcv 2.1.0 is built from its
# sdist without compiled ops (MMCV_WITH_OPS=0): BiSeNetV1 uses none of them.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv-mmseg
[ -f $V/.ready ] && exit 0
PY=${PYTHON:-python3}
rm -rf $V && "$PY" -m venv $V
$V/bin/python -m pip install -q --upgrade pip
$V/bin/python -m pip install -q "torch==2.13.0"
$V/bin/python -m pip install -q "mmengine==0.10.7" "mmsegmentation==1.2.2" ftfy regex "setuptools<70" wheel
src=$(mktemp -d)
$V/bin/python -m pip download -q --no-deps --no-build-isolation --no-binary :all: -d "$src" "mmcv==2.1.0"
tar xzf "$src"/mmcv-2.1.0.tar.gz -C "$src"
MMCV_WITH_OPS=0 $V/bin/python -m pip install -q --no-build-isolation "$src/mmcv-2.1.0"
rm -rf "$src"
touch $V/.ready
