"""`bisenet calibrate`: fp32 ONNX -> INT8 QDQ ONNX, calibrated on the model's own data.

    1. draw N images from --data (dataset split, folder or video), preprocessed exactly as
       at run time; the list is saved beside the result (<out>.calib.txt)
    2. one calibration pass over them (entropy / minmax / percentile ranges)
    3. optional per-layer sensitivity report; keep the worst layers float
    4. write the flavors from the same ranges: cpu (U8S8, ONNX Runtime) and/or tensorrt
       (symmetric int8, TensorRT explicit quantization), each with its sidecar JSON
    5. optional accuracy gate on a val split: fails (exit 3) when the mIoU drop exceeds
       --max-drop, unless --force
"""
from __future__ import annotations

import datetime
import sys
import tempfile
from pathlib import Path

from calibration import ort_quantize
from core.errors import InputError, MissingFileError
from calibration.image_set import CalibrationSet
from core.files import file_sha256
from core.sidecar import read_sidecar, sidecar_path, write_sidecar

HELP = "INT8-quantize an exported ONNX (QDQ, ONNX Runtime CPU and TensorRT flavors) with an accuracy gate"
EXAMPLE = ("bisenet calibrate --onnx r18.onnx --data camvid --num-images 256 --target both "
           "--val camvid --max-drop 1.0 -o r18.int8.onnx")
GATE_FAILED = 3

FLAVOR_INFO = {
    "cpu": {"runtime": "onnxruntime-cpu", "activations": "uint8 asymmetric per-tensor",
            "weights": "int8 symmetric per-channel"},
    "tensorrt": {"runtime": "tensorrt (explicit quantization)", "activations": "int8 symmetric per-tensor",
                 "weights": "int8 symmetric per-channel"},
}


def add_arguments(p):
    p.add_argument("--onnx", required=True, help="fp32 model from `bisenet export` (its sidecar JSON beside it)")
    p.add_argument("--data", required=True,
                   help="calibration images: dataset config (e.g. camvid), split list (train.txt), folder or video")
    p.add_argument("--data-split", default="train", help="split of a dataset config to draw from (default train)")
    p.add_argument("--num-images", type=int, default=512, help="calibration images (default 512)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image draw (default 0)")
    # minmax is the default because it measured best here: on the CamVid R18 (docs/int8.md)
    # entropy clipped car/bicyclist activations and lost 4 mIoU where minmax lost 0.03.
    p.add_argument("--method", choices=ort_quantize.METHODS, default="minmax",
                   help="how activation ranges are chosen (default minmax; see docs/int8.md)")
    p.add_argument("--target", choices=("cpu", "tensorrt", "both"), default="cpu",
                   help="cpu: U8S8 for ONNX Runtime; tensorrt: symmetric int8 Q/DQ; both: two files, one calibration")
    p.add_argument("--keep-float", default="", help="comma list of node names to leave float (see the sensitivity report)")
    p.add_argument("--keep-float-top", type=int, default=0,
                   help="run the sensitivity report and keep its K worst layers float")
    p.add_argument("--sensitivity", action="store_true", help="write the per-layer sensitivity report (<out>.sensitivity.json)")
    p.add_argument("--sensitivity-images", type=int, default=8, help="images for the sensitivity report (default 8)")
    p.add_argument("--trt-cache", help="also write a TensorRT entropy-calibration cache (implicit INT8 for "
                   "`bisenet build --calib-cache`) from the same images; needs TensorRT 8.6 or 10.x (11 has no "
                   "implicit INT8), pycuda and a GPU")
    p.add_argument("--val", help="dataset config for the accuracy gate (e.g. camvid); omitted: no gate")
    p.add_argument("--val-split", default="val")
    p.add_argument("--val-limit", type=int, help="only the first N val images (quick checks)")
    p.add_argument("--max-drop", type=float, default=1.0, help="largest allowed mIoU drop in points (default 1.0)")
    p.add_argument("--force", action="store_true", help="keep the int8 model even when the gate fails")
    p.add_argument("--threads", type=int, help="inference threads for the gate and report")
    p.add_argument("--gate-backend", choices=("onnxruntime", "openvino"), default="onnxruntime",
                   help="CPU backend the gate evaluates fp32 and int8 on (default onnxruntime; the app runs an "
                   "int8 model on openvino by default)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--output", required=True, help="int8 .onnx (tensorrt flavor of -o x.int8.onnx: x.int8.trt.onnx)")


def output_paths(output: str, target: str) -> dict:
    out = Path(output)
    if out.suffix != ".onnx":
        raise InputError(f"-o {output}: the output file must end in .onnx")
    trt = out.with_name(out.name[: -len(".onnx")] + ".trt.onnx")
    return {"cpu": {"cpu": out}, "tensorrt": {"tensorrt": out}, "both": {"cpu": out, "tensorrt": trt}}[target]


def run(args) -> int:
    src = Path(args.onnx)
    if not src.is_file():
        raise MissingFileError(f"--onnx {src} does not exist; export one with `bisenet export`")
    meta = read_sidecar(src)
    if meta.get("precision", "fp32") != "fp32":
        raise InputError(f"--onnx {src} is already {meta['precision']}; calibrate the fp32 export")
    outs = output_paths(args.output, args.target)
    if args.trt_cache:
        from calibration.tensorrt_calibrator import implicit_int8_tensorrt

        implicit_int8_tensorrt(src.name)   # fail now (no tensorrt, or 11.x: no implicit INT8), not after minutes
    first = next(iter(outs.values()))
    _, _, h, w = meta["input_shape"]
    quiet = args.quiet

    calib = CalibrationSet.from_data(args.data, args.num_images, args.seed, (h, w), meta["mean"], meta["std"],
                                     split=args.data_split)
    if len(calib) < args.num_images:
        print(f"note: --data {args.data} has {len(calib)} images, fewer than --num-images {args.num_images}; "
              "using all of them", file=sys.stderr)
    list_file = calib.save_list(first.with_suffix(".calib.txt"))
    print(f"calibration set: {len(calib)} images from {args.data} (seed {args.seed}) -> {list_file}", file=sys.stderr)

    keep_float = [n for n in args.keep_float.split(",") if n]
    with tempfile.TemporaryDirectory(prefix="bisenet-int8-") as tmp:
        prepared = ort_quantize.prepare_fp32(src, Path(tmp) / "prepared.onnx")
        layers = [name for name, _ in ort_quantize.quantizable_nodes(prepared)]
        unknown = [n for n in keep_float if n not in layers]
        if unknown:
            raise InputError(f"--keep-float {', '.join(unknown)}: no such layer; use names from the sensitivity "
                             f"report (--sensitivity), e.g. {layers[0]}")
        ranges = ort_quantize.calibrate_ranges(prepared, calib, args.method, Path(tmp) / "ranges.json",
                                               progress=not quiet)
        if args.sensitivity or args.keep_float_top:
            from calibration import sensitivity

            flavor = "cpu" if "cpu" in outs else "tensorrt"
            images = [x for x, _ in zip(calib, range(args.sensitivity_images))]
            report = sensitivity.layer_sensitivity(prepared, ranges, args.method, flavor, images,
                                                   args.threads, progress=not quiet)
            report_path = sensitivity.save_report(report, first.with_suffix(".sensitivity.json"))
            print(sensitivity.format_report(report), file=sys.stderr)
            print(f"sensitivity report -> {report_path}", file=sys.stderr)
            keep_float += [r["name"] for r in report["layers"][: args.keep_float_top] if r["name"] not in keep_float]
        if keep_float:
            print(f"kept float: {', '.join(keep_float)}", file=sys.stderr)
        float_tail = ort_quantize.float_tail_nodes(prepared)
        for flavor, path in outs.items():
            ort_quantize.write_flavor(prepared, ranges, args.method, flavor, path, keep_float=keep_float)
            write_sidecar(path, int8_sidecar(meta, src, path, flavor, calib, args, list_file, keep_float, float_tail))
            q = ort_quantize.count_qdq(path)
            print(f"wrote {path} ({flavor}: {FLAVOR_INFO[flavor]['activations']} activations, "
                  f"{q['QuantizeLinear']} Q / {q['DequantizeLinear']} DQ nodes)")

    if args.trt_cache:
        from calibration.tensorrt_calibrator import write_tensorrt_cache

        cache = write_tensorrt_cache(src, calib, args.trt_cache)
        print(f"wrote TensorRT calibration cache {cache} (+ {cache.name}.json key)")
    if not args.val:
        return 0
    return accuracy_gate(args, src, outs)


def int8_sidecar(meta: dict, src: Path, path: Path, flavor: str, calib, args, list_file: Path, keep_float,
                 float_tail) -> dict:
    out = {k: v for k, v in meta.items() if k != "sidecar_version"}
    out.update({
        "precision": "int8", "flavor": flavor, "quantization": {"format": "QDQ", **FLAVOR_INFO[flavor]},
        "calibration": {"data": str(args.data), "split": args.data_split, "num_images": len(calib),
                        "seed": args.seed, "method": args.method, "list_file": list_file.name,
                        "preprocessing": calib.preprocessing()},
        "keep_float": list(keep_float), "float_tail": list(float_tail),
        "source_onnx": src.name, "source_onnx_sha256": file_sha256(src), "onnx_sha256": file_sha256(path),
        "calibrated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    try:
        import onnxruntime

        out["onnxruntime_version"] = onnxruntime.__version__
    except ImportError:
        pass
    return out


def accuracy_gate(args, src: Path, outs: dict) -> int:
    from calibration import gate

    # The gate runs on the CPU (--gate-backend): the cpu flavor when written, else the tensorrt
    # one (its symmetric Q/DQ runs on the CPU too, as a stand-in for the TensorRT engine).
    flavor, int8_path = next(iter(outs.items()))
    backend = getattr(args, "gate_backend", "onnxruntime")
    fp32 = gate.evaluate_onnx(src, args.val, args.val_split, args.val_limit, args.threads, backend=backend)
    int8 = gate.evaluate_onnx(int8_path, args.val, args.val_split, args.val_limit, args.threads, backend=backend)
    result = gate.compare(fp32, int8, args.max_drop)
    print(gate.format_gate(result))
    for path in outs.values():   # record the verdict in every flavor's sidecar
        meta = read_sidecar(path)
        meta["accuracy_gate"] = {k: v for k, v in result.items() if k != "per_class_iou"} | {"flavor_evaluated": flavor}
        meta.pop("sidecar_version", None)
        write_sidecar(path, meta)
    if result["passed"] or args.force:
        if not result["passed"]:
            print(f"warning: mIoU drop {result['mIoU_drop']:.2f} exceeds --max-drop {args.max_drop}; kept because of --force",
                  file=sys.stderr)
        return 0
    rejected = []
    for path in outs.values():   # moved aside, not deleted: nothing is lost, nothing loads it by mistake
        dest = path.with_name(path.name[: -len(".onnx")] + ".rejected.onnx")
        path.replace(dest)
        sidecar_path(path).replace(sidecar_path(dest))
        rejected.append(str(dest))
    print(f"bisenet calibrate: error: int8 loses {result['mIoU_drop']:.2f} mIoU (> --max-drop {args.max_drop}); "
          f"moved to {', '.join(rejected)}. Try --method minmax/percentile, --keep-float-top 3, more images, "
          "or --force to keep it", file=sys.stderr)
    return GATE_FAILED
