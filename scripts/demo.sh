#!/usr/bin/env bash
# The main job on a fresh machine: set up, get a model, segment the street clip.
# Writes artifacts/demo/{model.onnx, overlay.mp4, latency.csv, latency.png}.
#   MODEL=<zoo name or YAML>  CHECKPOINT=<.pth>  SOURCE=<video/camera/rtsp>  SIZE=HxW  ./scripts/demo.sh
# Without CHECKPOINT the official mmseg checkpoint of MODEL is downloaded (cached). Offline
# with no checkpoint, it says so and runs the whole pipeline with random weights instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=${MODEL:-bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024}
SOURCE=${SOURCE:-../shared/data/samples/camvid_0016E5_15fps.mp4}
SIZE=${SIZE:-352x480}
OUT=artifacts/demo
mkdir -p "$OUT"
BISENET=.venv/bin/bisenet
if [ -n "${CHECKPOINT:-}" ]; then
    $BISENET export --model "$MODEL" --checkpoint "$CHECKPOINT" --size "$SIZE" -o "$OUT/model.onnx"
elif ! $BISENET export --model "$MODEL" --size "$SIZE" -o "$OUT/model.onnx"; then
    echo "demo: no checkpoint could be had (offline?). Running the pipeline with RANDOM weights: the colors" \
         "mean nothing. For real output pass CHECKPOINT=path/to.pth (official mmseg or your own)." >&2
    $BISENET export --model "$MODEL" --random-init --size "$SIZE" -o "$OUT/model.onnx"
fi
.venv/bin/python run_camera.py --source "$SOURCE" --model "$OUT/model.onnx" --hud --legend \
    --output "$OUT/overlay.mp4" --latency-log "$OUT/latency.csv"
$BISENET latency-plot "$OUT/latency.csv" -o "$OUT/latency.png"
echo "demo: wrote $OUT/overlay.mp4, $OUT/latency.csv and $OUT/latency.png"
