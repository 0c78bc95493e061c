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

from typing import Annotated

from calibration.tensorrt_calibrator import cache_calibrator
from core import options
from core.options import OneOf, Rule, Section, Text, option
from core.validate import Number
from engines.tensorrt_build import build
from engines.tensorrt_plan import PRECISIONS, BuildOptions

HELP = "build a TensorRT engine (fp32, fp16 or int8, GPU or Jetson DLA) from an exported ONNX model"
EXAMPLE = "bisenet build --onnx artifacts/camvid.onnx --precision fp16 -o artifacts/camvid.fp16.engine"


class BuildFlags(Section):
    """`bisenet build`'s options, each declared once."""
    onnx: Text = option(None, "exported model (with its model.onnx.json sidecar)", required=True)
    precision: Annotated[str, Rule(OneOf(PRECISIONS))] = option(
        "fp16", "fp16 (default), fp32, or int8 (a QDQ ONNX, or a plain ONNX with --calib-cache). TensorRT 11 takes "
        "the precision from the ONNX: fp16 needs `bisenet export --precision fp16`, int8 the QDQ model")
    calib_cache: Text = option(None, "TensorRT INT8 calibration cache for a plain ONNX (implicit INT8; TensorRT 8.6 "
                               "and 10.x only)")
    workspace: Annotated[int, Rule(Number(int, 1, 1 << 20, hint="MiB"))] = option(
        1024, "builder workspace memory limit in MiB (default 1024; Jetson Nano/NX: 256-512)", metavar="MB")
    timing_cache: Text = option(None, "read and update this timing cache: rebuilds take seconds, not minutes")
    dla_core: Annotated[int | None, Rule(Number(int, 0, 15))] = option(
        None, "build for this Jetson DLA core (layers DLA lacks fall back to the GPU)")
    shapes: Text = option(None, "for an ONNX with dynamic H/W: min/opt/max input shapes, each HxW or NxCxHxW, "
                          "e.g. 256x512/512x1024/1024x2048")
    max_batch: Annotated[int | None, Rule(Number(int, 1, 1024, hint="frames per inference, the profile's max"))] = \
        option(None, "for a dynamic-batch ONNX (bisenet export --dynamic-batch): the engine takes 1 to N frames per "
               "inference, tuned for N (default: the ONNX sidecar's max_batch)", metavar="N")
    output: Text = option(None, "the engine file to write (its sidecar goes beside it)", short="-o", required=True)


OPTIONS = (BuildFlags,)   # checked by app/cli.py before run()


def add_arguments(p):
    options.add_arguments(p, OPTIONS, suppress=False)


def run(args) -> int:
    build(BuildOptions(args.onnx, args.output, precision=args.precision, calib_cache=args.calib_cache,
                       workspace_mb=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core,
                       shapes=args.shapes, max_batch=args.max_batch, int8_calibrator=cache_calibrator))
    return 0
