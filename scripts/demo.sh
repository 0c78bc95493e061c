#!/usr/bin/env bash
# The main job on a fresh machine: set up, get a model, segment the street clip.
# Writes artifacts/demo/{model.onnx, overlay.mp4, latency.csv, latency.png}.
#   MODEL=<zoo name or YAML>  CHECKPOINT=<.pth>  SOURCE=<video/camera/rtsp>  SIZE=HxW  ./scripts/demo.sh
# Without CHECKPOINT the official mmseg checkpoint of MODEL is downloaded (cached). Offline,
# it says so and uses the CamVid model trained by this project's recipe
# (../shared/models/camvid_r18-d32_cpu.pth); random weights only when that is missing too
# (scripts/demo_model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/demo_model.sh
SOURCE=${SOURCE:-../shared/data/samples/camvid_0016E5_15fps.mp4}
OUT=artifacts/demo
mkdir -p "$OUT"
export_demo_model "$OUT/model.onnx"
.venv/bin/python run_camera.py --source "$SOURCE" --model "$OUT/model.onnx" --hud --legend \
    --output "$OUT/overlay.mp4" --latency-log "$OUT/latency.csv"
$BISENET latency-plot "$OUT/latency.csv" -o "$OUT/latency.png"
echo "demo: wrote $OUT/overlay.mp4, $OUT/latency.csv and $OUT/latency.png"
