#!/usr/bin/env bash
# PyGObject for the venv, for the app's own RTSP server (--output rtsp://@:PORT/PATH) and its
# tests. Debian's python3-gi is built for Debian's Python 3.X: when the venv's Python has the same
# X, the venv reaches that package through a .pth (nothing is built); otherwise PyGObject is
# built from PyPI (needs libgirepository1.0-dev, libcairo2-dev, pkg-config).
set -euo pipefail
cd "$(dirname "$0")/.."
venv_py=.venv/bin/python
debian_gi=/usr/lib/python3/dist-packages/gi
$venv_py -c 'import gi' 2>/dev/null && exit 0
site=$($venv_py -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
want=$($venv_py -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
if [ -d "$debian_gi" ] && ls "$debian_gi"/_gi.cpython-"$want"-*.so >/dev/null 2>&1; then
    # Only gi itself, not the whole of Debian's dist-packages (its numpy etc. would shadow the venv's).
    mkdir -p "$site/_debian_gi"
    ln -sfn "$debian_gi" "$site/_debian_gi/gi"
    echo "$site/_debian_gi" > "$site/debian-gi.pth"
else
    $venv_py -m pip install -q "PyGObject<3.51"
fi
$venv_py -c 'import gi' || echo "PyGObject is not importable in .venv: the RTSP-serve tests will skip" >&2
