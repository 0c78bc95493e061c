# Sourced by scripts/demo.sh (and by tests/test_demo_model.py): which model the demo runs.
#   export_demo_model OUT.onnx  exports, in this order of preference:
#     1. MODEL with CHECKPOINT, when CHECKPOINT is given;
#     2. MODEL with its official mmseg checkpoint (downloaded, cached);
#     3. offline: the CamVid model trained by this project's own recipe (CAMVID_CHECKPOINT,
#        ../shared/models/camvid_r18-d32_cpu.pth; see docs/training.md);
#     4. neither: MODEL with random weights, so at least the pipeline shows.
#   calibrate_demo_model FP32.onnx OUT.int8.onnx  the app's choice on a CPU: INT8 calibrated on
#     the demo clip's frames (INT8_IMAGES, default 32); for the CamVid model also gated on
#     DEMO_VAL_LIMIT (default 20) CamVid val images per CPU precision (int8+fp32, int8+bf16 where
#     the CPU has bf16), so the app picks the fastest that passed. INT8=0 skips it (fp32).
# Paths are relative to the project root (demo.sh runs from there).
MODEL=${MODEL:-bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024}
SIZE=${SIZE:-352x480}
BISENET=${BISENET:-.venv/bin/bisenet}
CAMVID_MODEL=bisenetv1_r18-d32_camvid-360x480
CAMVID_CHECKPOINT=${CAMVID_CHECKPOINT:-../shared/models/camvid_r18-d32_cpu.pth}

export_demo_model() {
    local out=$1 official why
    if [ -n "${CHECKPOINT:-}" ]; then
        $BISENET export --model "$MODEL" --checkpoint "$CHECKPOINT" --size "$SIZE" -o "$out"
        return
    fi
    # The official checkpoint's failure (offline) goes into the fallback's one line, not before it.
    { official=$($BISENET export --model "$MODEL" --size "$SIZE" -o "$out" 2>&1 1>&3); } 3>&1 && {
        [ -z "$official" ] || echo "$official" >&2
        return 0
    }
    why=$(printf '%s\n' "$official" | grep -m1 'error:' | sed 's/.*error: //')
    why=${why:-$(printf '%s\n' "$official" | tail -n1)}
    if [ -f "$CAMVID_CHECKPOINT" ]; then
        echo "demo: no official checkpoint for $MODEL could be had ($why); using the CamVid model trained by" \
             "this project's recipe instead: $CAMVID_MODEL with $CAMVID_CHECKPOINT (sky, building, road, tree, car, ...)." >&2
        $BISENET export --model "$CAMVID_MODEL" --checkpoint "$CAMVID_CHECKPOINT" --size "$SIZE" -o "$out"
        DEMO_VAL=camvid
    else
        echo "demo: no checkpoint could be had ($why) and no $CAMVID_CHECKPOINT. Running the pipeline with RANDOM" \
             "weights: the colors mean nothing. For real output pass CHECKPOINT=path/to.pth (official mmseg or your own)." >&2
        $BISENET export --model "$MODEL" --random-init --size "$SIZE" -o "$out"
    fi
}

calibrate_demo_model() {
    local fp32=$1 out=$2 gate=()
    if [ "${INT8:-1}" = 0 ]; then
        echo "demo: INT8=0: running fp32." >&2
        return 1
    fi
    if [ ! -f "${SOURCE:-}" ]; then
        echo "demo: SOURCE is not a file, so there are no frames to calibrate on: running fp32." >&2
        return 1
    fi
    if [ -n "${DEMO_VAL:-}" ] && [ -f ../shared/data/camvid/val.txt ]; then
        gate=(--val "$DEMO_VAL" --val-limit "${DEMO_VAL_LIMIT:-20}" --gate-backend openvino)
    fi
    $BISENET calibrate --onnx "$fp32" --data "$SOURCE" --num-images "${INT8_IMAGES:-32}" "${gate[@]}" --quiet -o "$out"
}
