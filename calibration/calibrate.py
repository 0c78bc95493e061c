"""`bisenet calibrate`: fp32 ONNX -> INT8 QDQ ONNX, calibrated on the model's own data.

    1. draw N images from --data (dataset split, folder or video), preprocessed exactly as
       at run time; the list is saved beside the result (<out>.calib.txt)
    2. one calibration pass over them (entropy / minmax / percentile ranges)
    3. optional per-layer sensitivity report; keep the worst layers float
    4. write the flavors from the same ranges: cpu (U8S8, ONNX Runtime) and/or tensorrt
       (symmetric int8, TensorRT explicit quantization), each with its sidecar JSON
    5. optional accuracy gate on a val split, for every run-time precision this CPU can run
       the int8 model in (ONNX Runtime int8; OpenVINO int8+fp32, int8+bf16 with bf16): a
       precision passes when the mIoU drops at most --max-drop and no class with a meaningful
       pixel share drops more than --max-class-drop. The passing ones go into the sidecar (the
       app runs the fastest of them, engines/precision.py); the table goes beside the model
       (<out>.gate.json). When none passes, the fallback keeps the --fallback-keep-float most
       sensitive layers float and gates again; still failing: exit 3, unless --force
"""
from __future__ import annotations

import datetime
import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

from calibration import ort_quantize
from core import options
from core.options import OneOf, Rule, Section, Switch, Text, option
from core.validate import Number
from core.errors import InputError, MissingFileError, SetupError, first_line
from calibration.image_set import CalibrationSet
from core.files import file_sha256
from core.sidecar import read_sidecar, sidecar_path, write_sidecar

HELP = "INT8-quantize an exported ONNX (QDQ, ONNX Runtime CPU and TensorRT flavors) with an accuracy gate"
EXAMPLE = ("bisenet calibrate --onnx artifacts/camvid.onnx --data camvid --num-images 256 --target both "
           "--val camvid --max-drop 1.0 -o artifacts/camvid.int8.onnx")
GATE_FAILED = 3

FLAVOR_INFO = {
    "cpu": {"runtime": "onnxruntime-cpu", "activations": "uint8 asymmetric per-tensor",
            "weights": "int8 symmetric per-channel"},
    "tensorrt": {"runtime": "tensorrt (explicit quantization)", "activations": "int8 symmetric per-tensor",
                 "weights": "int8 symmetric per-channel"},
}


COUNT = Number(int, min=1)
POINTS = Number(float, -100, 100)


class CalibrateFlags(Section):
    """`bisenet calibrate`'s options, each declared once."""
    onnx: Text = option(None, "fp32 model from `bisenet export` (its sidecar JSON beside it)", required=True)
    data: Text = option(None, "calibration images: dataset config (e.g. camvid), split list (train.txt), folder or "
                        "video", required=True)
    data_split: Text = option("train", "split of a dataset config to draw from (default train)")
    num_images: Annotated[int, Rule(COUNT)] = option(512, "calibration images (default 512)")
    seed: Annotated[int, Rule(Number(int, min=0))] = option(0, "seed of the image draw (default 0)")
    # minmax is the default because it measured best here: on the CamVid R18 (docs/int8.md)
    # entropy clipped car/bicyclist activations and lost 4 mIoU where minmax lost 0.03.
    method: Annotated[str, Rule(OneOf(ort_quantize.METHODS))] = option(
        "minmax", "how activation ranges are chosen (default minmax; see docs/int8.md)")
    target: Annotated[str, Rule(OneOf(("cpu", "tensorrt", "both")))] = option(
        "cpu", "cpu: U8S8 for ONNX Runtime; tensorrt: symmetric int8 Q/DQ; both: two files, one calibration")
    keep_float: Text = option("", "comma list of node names to leave float (see the sensitivity report)")
    keep_float_top: Annotated[int, Rule(Number(int, min=0))] = option(
        0, "run the sensitivity report and keep its K worst layers float")
    sensitivity: Switch = option(False, "write the per-layer sensitivity report (<out>.sensitivity.json)",
                                 action="store_true")
    sensitivity_images: Annotated[int, Rule(COUNT)] = option(8, "images for the sensitivity report (default 8)")
    trt_cache: Text = option(None, "also write a TensorRT entropy-calibration cache (implicit INT8 for "
                             "`bisenet build --calib-cache`) from the same images; needs TensorRT 8.6 or 10.x (11 "
                             "has no implicit INT8), pycuda and a GPU")
    val: Text = option(None, "dataset config for the accuracy gate (e.g. camvid); omitted: no gate")
    val_split: Text = option("val", "split of --val (default val)")
    val_limit: Annotated[int | None, Rule(COUNT)] = option(None, "only the first N val images (quick checks)")
    max_drop: Annotated[float, Rule(POINTS)] = option(1.0, "largest allowed mIoU drop in points (default 1.0)")
    max_class_drop: Annotated[float, Rule(POINTS)] = option(
        5.0, "largest allowed IoU drop of any one class in points (default 5.0)")
    min_class_share: Annotated[float, Rule(Number(float, 0, 100))] = option(
        0.5, "classes with less than this % of the val pixels are shown, not gated (default 0.5)")
    fallback_keep_float: Annotated[int, Rule(Number(int, min=0))] = option(
        3, "when no precision passes: keep this many most sensitive layers float and gate again (default 3; 0: no "
        "fallback)")
    force: Switch = option(False, "keep the int8 model even when the gate fails", action="store_true")
    threads: Annotated[int | None, Rule(Number(int, 1, 1024))] = option(
        None, "inference threads for the gate and report")
    gate_backend: Annotated[str, Rule(OneOf(("all", "onnxruntime", "openvino")))] = option(
        "all", "CPU backends whose int8 precisions the gate evaluates (default all: ONNX Runtime int8, OpenVINO "
        "int8+fp32 and, on a CPU with bf16, int8+bf16); fp32 is the reference, on ONNX Runtime (on OpenVINO with "
        "--gate-backend openvino)")
    quiet: Switch = option(False, "no progress bars", action="store_true")
    output: Text = option(None, "int8 .onnx (tensorrt flavor of -o x.int8.onnx: x.int8.trt.onnx)", short="-o",
                          required=True)


OPTIONS = (CalibrateFlags,)   # checked by app/cli.py before run()


def add_arguments(p):
    options.add_arguments(p, OPTIONS, suppress=False)


def check_onnx_readable(src: Path) -> None:
    """--onnx must parse as an ONNX model (a truncated or corrupt file is a DecodeError)."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        onnx.checker.check_model(onnx.load(str(src), load_external_data=False))
    except (DecodeError, OSError, ValueError, onnx.checker.ValidationError) as e:
        raise InputError(f"--onnx {src} is not a readable ONNX model ({first_line(e)[:200]}); re-export it with "
                         "`bisenet export`") from None


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
    check_onnx_readable(src)   # a corrupt file: one line now, before anything is written
    if args.trt_cache:
        from calibration.tensorrt_calibrator import implicit_int8_tensorrt

        implicit_int8_tensorrt(src.name)   # fail now (no tensorrt, or 11.x: no implicit INT8), not after minutes
    first = next(iter(outs.values()))
    _, _, h, w = meta["input_shape"]

    calib = CalibrationSet.from_data(args.data, args.num_images, args.seed, (h, w), meta["mean"], meta["std"],
                                     split=args.data_split)
    if len(calib) < args.num_images:
        print(f"note: --data {args.data} has {len(calib)} images, fewer than --num-images {args.num_images}; "
              "using all of them", file=sys.stderr)
    list_file = calib.save_list(first.with_suffix(".calib.txt"))
    print(f"calibration set: {len(calib)} images from {args.data} (seed {args.seed}) -> {list_file}", file=sys.stderr)

    try:
        return quantize(args, src, meta, outs, calib, list_file)
    except BaseException:
        # A failed or interrupted calibration leaves no list behind: it would describe nothing.
        list_file.unlink(missing_ok=True)
        raise


def quantize(args, src: Path, meta: dict, outs: dict, calib, list_file: Path) -> int:
    """Ranges from the calibration set, the int8 file(s) and their sidecars, then the gate."""
    quiet = args.quiet
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
        report = None
        if args.sensitivity or args.keep_float_top:
            report = sensitivity_report(args, prepared, ranges, outs, calib)
            keep_float += [r["name"] for r in report["layers"][: args.keep_float_top] if r["name"] not in keep_float]

        def write_flavors(keep):
            if keep:
                print(f"kept float: {', '.join(keep)}", file=sys.stderr)
            float_tail = ort_quantize.float_tail_nodes(prepared)
            for flavor, path in outs.items():
                ort_quantize.write_flavor(prepared, ranges, args.method, flavor, path, keep_float=keep)
                write_sidecar(path, int8_sidecar(meta, src, path, flavor, calib, args, list_file, keep, float_tail))
                q = ort_quantize.count_qdq(path)
                print(f"wrote {path} ({flavor}: {FLAVOR_INFO[flavor]['activations']} activations, "
                      f"{q['QuantizeLinear']} Q / {q['DequantizeLinear']} DQ nodes)")

        write_flavors(keep_float)
        if args.trt_cache:
            from calibration.tensorrt_calibrator import write_tensorrt_cache

            cache = write_tensorrt_cache(src, calib, args.trt_cache)
            print(f"wrote TensorRT calibration cache {cache} (+ {cache.name}.json key)")
        if not args.val:
            return 0
        fp32_ref = evaluate_fp32(args, src)
        if accuracy_gate(args, outs, fp32_ref) or args.force or args.fallback_keep_float <= 0:
            return finish_gate(args, outs)
        # The documented fallback: the layers whose int8 error flips the most labels stay float.
        report = report or sensitivity_report(args, prepared, ranges, outs, calib)
        extra = [r["name"] for r in report["layers"] if r["name"] not in keep_float][: args.fallback_keep_float]
        print(f"no precision passed the gate; fallback: keeping the {len(extra)} most sensitive layers float "
              "and gating again", file=sys.stderr)
        write_flavors(keep_float + extra)
        accuracy_gate(args, outs, fp32_ref)
        return finish_gate(args, outs)


def sensitivity_report(args, prepared, ranges, outs: dict, calib) -> dict:
    from calibration import sensitivity

    first = next(iter(outs.values()))
    flavor = "cpu" if "cpu" in outs else "tensorrt"
    images = [x for x, _ in zip(calib, range(args.sensitivity_images))]
    report = sensitivity.layer_sensitivity(prepared, ranges, args.method, flavor, images,
                                           args.threads, progress=not args.quiet)
    report_path = sensitivity.save_report(report, first.with_suffix(".sensitivity.json"))
    print(sensitivity.format_report(report), file=sys.stderr)
    print(f"sensitivity report -> {report_path}", file=sys.stderr)
    return report


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


def evaluate_fp32(args, src: Path) -> dict:
    from calibration import gate

    backend = "openvino" if args.gate_backend == "openvino" else "onnxruntime"
    return gate.evaluate_onnx(src, args.val, args.val_split, args.val_limit, args.threads, backend=backend)


# Fastest first, for the record's headline: the precision the app will run (engines/precision.py).
SPEED_ORDER = ("int8+bf16", "int8+fp32", "int8")


def accuracy_gate(args, outs: dict, fp32_ref: dict) -> bool:
    """Evaluates every int8 precision this CPU can run against fp32_ref; prints the table, writes
    <out>.gate.json and the verdicts into every flavor's sidecar. True when any passed."""
    from calibration import gate
    from core.files import atomic_write_bytes
    from engines.cpu_features import detect

    # The gate runs on the CPU: the cpu flavor when written, else the tensorrt one (its
    # symmetric Q/DQ runs on the CPU too, as a stand-in for the TensorRT engine).
    flavor, int8_path = next(iter(outs.items()))
    cpu = detect()
    backends = ("onnxruntime", "openvino") if args.gate_backend == "all" else (args.gate_backend,)
    variants, skipped = gate.runnable_variants(cpu, backends)
    results = {}
    for name, backend, compute in variants:
        int8 = gate.evaluate_onnx(int8_path, args.val, args.val_split, args.val_limit, args.threads,
                                  backend=backend, precision=compute)
        results[name] = gate.compare(fp32_ref, int8, args.max_drop, args.max_class_drop, args.min_class_share)
    for name, why in skipped.items():
        print(f"gate: {name} not evaluated: {why}", file=sys.stderr)
    if not results:
        raise SetupError(f"the gate could not evaluate any int8 precision: {'; '.join(skipped.values())}")
    print(gate.format_gate(list(results.values())))
    passed = [n for n in SPEED_ORDER if n in results and results[n]["passed"]]
    headline = results[(passed or [n for n in SPEED_ORDER if n in results])[0]]
    report_path = int8_path.with_suffix(".gate.json")
    atomic_write_bytes(report_path, (json.dumps({
        "cpu": cpu.to_json(), "fp32": {k: fp32_ref.get(k) for k in ("mIoU", "backend", "per_class_iou", "pixel_share")},
        "precisions": results, "skipped": skipped, "passed_precisions": passed}, indent=1) + "\n").encode())
    print(f"gate report -> {report_path}", file=sys.stderr)
    record = gate.summary(headline) | {
        "passed": bool(passed), "flavor_evaluated": flavor, "passed_precisions": passed,
        "precisions": {n: gate.summary(r) for n, r in results.items()}, "not_evaluated": skipped,
        "cpu": cpu.summary(), "report": report_path.name}
    for path in outs.values():   # record the verdict in every flavor's sidecar
        meta = read_sidecar(path)
        meta["accuracy_gate"] = record
        meta.pop("sidecar_version", None)
        write_sidecar(path, meta)
    return bool(passed)


def finish_gate(args, outs: dict) -> int:
    """0 when a precision passed (or --force); else the models are moved aside and exit 3."""
    record = read_sidecar(next(iter(outs.values())))["accuracy_gate"]
    if record["passed"]:
        return 0
    if args.force:
        print(f"warning: no int8 precision passed the gate (mIoU drop {record['mIoU_drop']:.2f}, worst class "
              f"{record['worst_class']} -{record['worst_class_drop'] or 0:.2f}); kept because of --force", file=sys.stderr)
        return 0
    rejected = []
    for path in outs.values():   # moved aside, not deleted: nothing is lost, nothing loads it by mistake
        dest = path.with_name(path.name[: -len(".onnx")] + ".rejected.onnx")
        path.replace(dest)
        sidecar_path(path).replace(sidecar_path(dest))
        rejected.append(str(dest))
    print(f"bisenet calibrate: error: int8 fails the gate (mIoU drop {record['mIoU_drop']:.2f}, max --max-drop "
          f"{args.max_drop}; worst class {record['worst_class']} -{record['worst_class_drop'] or 0:.2f}, max "
          f"--max-class-drop {args.max_class_drop}); moved to {', '.join(rejected)}. Try --method minmax/percentile, "
          "--keep-float-top 3, more images, or --force to keep it", file=sys.stderr)
    return GATE_FAILED
