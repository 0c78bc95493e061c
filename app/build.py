"""`bisenet build`: exported ONNX -> TensorRT engine + model.engine.json.

    bisenet build --onnx model.onnx --precision fp16 -o model.fp16.engine
    bisenet build --onnx model.int8.onnx --precision int8 -o model.int8.engine        # QDQ: explicit INT8
    bisenet build --onnx model.onnx --precision int8 --calib-cache model.calib -o m.engine   # implicit INT8
    bisenet build --onnx model.onnx --precision fp16 --dla-core 0 -o model.dla.engine   # Jetson DLA
    bisenet build --onnx model.b4.onnx --max-batch 4 -o model.b4.engine   # --dynamic-batch export: 1..4 frames

The flags become one `BuildOptions` for engines/tensorrt_build.py. The command lives here,
above engines/ and calibration/, because an implicit INT8 build (--calib-cache) reads its
cache through calibration's entropy calibrator, and engines/ does not import calibration/.
"""
from __future__ import annotations

from calibration.tensorrt_calibrator import cache_calibrator
from engines.tensorrt_build import build
from engines.tensorrt_plan import PRECISIONS, BuildOptions

HELP = "build a TensorRT engine (fp32, fp16 or int8, GPU or Jetson DLA) from an exported ONNX model"
EXAMPLE = "bisenet build --onnx artifacts/camvid.onnx --precision fp16 -o artifacts/camvid.fp16.engine"


def add_arguments(p):
    p.add_argument("--onnx", required=True, help="exported model (with its model.onnx.json sidecar)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp16",
                   help="fp16 (default), fp32, or int8 (a QDQ ONNX, or a plain ONNX with --calib-cache). "
                   "TensorRT 11 takes the precision from the ONNX: fp16 needs `bisenet export --precision fp16`, "
                   "int8 the QDQ model")
    p.add_argument("--calib-cache", help="TensorRT INT8 calibration cache for a plain ONNX (implicit INT8; "
                   "TensorRT 8.6 and 10.x only)")
    p.add_argument("--workspace", type=int, default=1024, metavar="MB",
                   help="builder workspace memory limit in MiB (default 1024; Jetson Nano/NX: 256-512)")
    p.add_argument("--timing-cache", help="read and update this timing cache: rebuilds take seconds, not minutes")
    p.add_argument("--dla-core", type=int, help="build for this Jetson DLA core (layers DLA lacks fall back to the GPU)")
    p.add_argument("--shapes", help="for an ONNX with dynamic H/W: min/opt/max input shapes, each HxW or NxCxHxW, "
                   "e.g. 256x512/512x1024/1024x2048")
    p.add_argument("--max-batch", type=int, metavar="N",
                   help="for a dynamic-batch ONNX (bisenet export --dynamic-batch): the engine takes 1 to N frames "
                   "per inference, tuned for N (default: the ONNX sidecar's max_batch)")
    p.add_argument("-o", "--output", required=True, help="the engine file to write (its sidecar goes beside it)")


def run(args) -> int:
    build(BuildOptions(args.onnx, args.output, precision=args.precision, calib_cache=args.calib_cache,
                       workspace_mb=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core,
                       shapes=args.shapes, max_batch=args.max_batch, int8_calibrator=cache_calibrator))
    return 0
