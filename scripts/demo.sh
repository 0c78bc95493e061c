#!/usr/bin/env bash
# The main job on a fresh machine: set up, get a model, segment the street clip.
# Writes artifacts/demo/{model.onnx, model.int8.onnx, overlay.mp4, latency.csv, latency.png, run.log}.
# On a CPU it runs what the app would choose there: the model calibrated to INT8 on the clip's
# frames (about 30 s on 2 cores) and its fastest gated precision; INT8=0 runs fp32.
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
RUN_MODEL="$OUT/model.onnx"
if calibrate_demo_model "$OUT/model.onnx" "$OUT/model.int8.onnx"; then
    RUN_MODEL="$OUT/model.int8.onnx"
else
    echo "demo: running the fp32 model; for INT8 (2-3x faster on a CPU): $BISENET calibrate --onnx $OUT/model.onnx" \
         "--data $SOURCE --num-images 32 -o $OUT/model.int8.onnx (see docs/int8.md)" >&2
fi
.venv/bin/python run_camera.py --source "$SOURCE" --model "$RUN_MODEL" --hud --legend \
    --output "$OUT/overlay.mp4" --latency-log "$OUT/latency.csv" 2>&1 | tee "$OUT/run.log"
$BISENET latency-plot "$OUT/latency.csv" -o "$OUT/latency.png"
echo "demo: wrote $OUT/overlay.mp4, $OUT/latency.csv and $OUT/latency.png"
echo "demo: ran $(grep -m1 '^model: ' "$OUT/run.log" | cut -c8-)"
echo "demo: $(grep 'frames .* written' "$OUT/run.log" | tail -1 | sed 's/^[^f]*frames/frames/')"
