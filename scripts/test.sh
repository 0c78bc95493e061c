#!/usr/bin/env bash
# The test command: system packages the tests use, the venv, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v rtsp-server-perl >/dev/null || need+=(rtsp-server-perl)   # Debian names the binary so
command -v chromium >/dev/null || need+=(chromium)
command -v g++ >/dev/null || need+=(g++)   # builds engines/*.cu for the host kernel checks
/usr/bin/python3 -c 'import ensurepip' 2>/dev/null || need+=(python3-venv)   # .venv-triton (setup_triton.sh)
command -v openssl >/dev/null || need+=(openssl)   # a test certificate for the HTTPS test
# The app's own RTSP server (GStreamer's RTSP server through PyGObject, x264enc) and its auth tests.
for pkg in python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly gstreamer1.0-plugins-good; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)   # the MQTT broker of the analytics tests
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "missing system packages (tests needing them will skip): ${need[*]}; install with: sudo apt-get install ${need[*]}" >&2
    fi
fi
bash scripts/setup.sh
bash scripts/setup_gi.sh                # PyGObject in .venv for the RTSP-serve tests
bash scripts/setup_mmseg_reference.sh   # mmsegmentation 1.2 itself, for the parity tests
bash scripts/setup_triton.sh            # the Triton server's own venv, for the serve-triton tests
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
# The whole suite: one pytest process per test file, so the compute-only files can run two at a
# time, the timed ones alone after them, and last the timed ones that mostly wait two at a time
# (scripts/run_test_files.py): that keeps the suite
# inside its 15 minutes on 2 cores. (The segfault that once made one long process crash was
# OpenVINO's CPU plugin restoring a freed signal stack; engines/openvino_engine.py works around
# it, tests/engines/test_openvino_signal_stack.py holds both. `.venv/bin/python -m pytest -q`
# runs everything in one process too.)
.venv/bin/python scripts/run_test_files.py
