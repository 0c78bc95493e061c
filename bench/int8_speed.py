"""INT8 vs fp32 on ONNX Runtime CPU: one run, side-by-side milliseconds and the speed-up.

For each size it exports the fp32 ONNX (`bisenet export`), quantizes it with the cpu
flavor of `bisenet calibrate` (U8S8 QDQ, per-channel weights), then times both sessions
interleaved (fp32, int8, fp32, int8, ...) so background load hits both alike. Sessions use
graph optimization level ALL and an explicit intra-op thread count; the int8 graph's
fused kernels (QLinearConv count after optimization) are printed as evidence.

    python bench/int8_speed.py --random-init --sizes 512x1024,360x480 --threads 2
    python bench/int8_speed.py --model configs/models/x.yaml --checkpoint best.pth
    python bench/int8_speed.py --pair r18.onnx r18.int8.onnx          # already built models

A size that is not a multiple of 32 (360x480) is exported with dynamic H/W at the next
lower multiple (352x480) and run at the size asked for.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_MODEL = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "camvid" / "train.txt"


def parse_sizes(text: str) -> list:
    out = []
    for part in text.split(","):
        h, w = (int(v) for v in part.lower().split("x"))
        out.append((h, w))
    return out


def session(path, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build_pair(args, size_hw, workdir: Path) -> tuple[Path, Path, tuple]:
    """fp32 export + cpu-flavor int8 for one size; returns (fp32, int8, run size)."""
    from engines.export import export_onnx
    from core.model_config import load_model_config

    h, w = size_hw
    eh, ew = h // 32 * 32, w // 32 * 32
    dynamic = (eh, ew) != (h, w)
    tag = f"{h}x{w}"
    fp32 = workdir / f"bench_{tag}.onnx"
    int8 = workdir / f"bench_{tag}.int8.onnx"
    cfg = load_model_config(args.model)
    print(f"[{tag}] export {cfg.name} at {eh}x{ew}{' (dynamic H/W)' if dynamic else ''} -> {fp32}", file=sys.stderr)
    export_onnx(cfg, args.checkpoint, fp32, (eh, ew), "labels", dynamic=dynamic, random_init=args.random_init)
    from app.cli import main as cli

    print(f"[{tag}] calibrate {args.num_images} images ({args.method}) -> {int8}", file=sys.stderr)
    rc = cli(["calibrate", "--onnx", str(fp32), "--data", str(args.calib_data), "--num-images", str(args.num_images),
              "--method", args.method, "--target", "cpu", "--quiet", "-o", str(int8)])
    if rc:
        raise SystemExit(f"calibration failed for {tag}")
    return fp32, int8, (h, w)


def time_pair(fp32: Path, int8: Path, size_hw, threads: int, runs: int, warmup: int) -> dict:
    a, b = session(fp32, threads), session(int8, threads)
    name = a.get_inputs()[0].name
    h, w = size_hw
    x = np.random.default_rng(0).normal(size=(1, 3, h, w)).astype(np.float32)
    for _ in range(warmup):
        a.run(None, {name: x})
        b.run(None, {name: x})
    ta, tb = [], []
    for _ in range(runs):   # interleaved: load changes hit both models alike
        t = time.perf_counter()
        a.run(None, {name: x})
        ta.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        b.run(None, {name: x})
        tb.append((time.perf_counter() - t) * 1000)
    return {"fp32_ms": statistics.median(ta), "int8_ms": statistics.median(tb),
            "fp32_min": min(ta), "int8_min": min(tb)}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description="INT8 (QDQ U8S8) vs fp32 ONNX Runtime CPU latency, side by side")
    p.add_argument("--model", default=DEFAULT_MODEL, help="zoo name or model YAML (for export)")
    p.add_argument("--checkpoint", help="checkpoint to export (else --random-init: speed does not depend on weights)")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--pair", nargs=2, action="append", metavar=("FP32", "INT8"), help="time these models instead")
    p.add_argument("--sizes", default="512x1024,360x480", help="HxW list (default 512x1024,360x480)")
    p.add_argument("--calib-data", default=str(DEFAULT_DATA), help="calibration images (default CamVid train.txt)")
    p.add_argument("--num-images", type=int, default=16)
    p.add_argument("--method", default="minmax", help="calibration method for the bench models (default minmax)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime intra-op threads")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--workdir", default="artifacts/bench_int8")
    args = p.parse_args(argv)

    import onnxruntime as ort

    from calibration.ort_quantize import optimized_op_counts

    if not args.pair and not args.checkpoint and not args.random_init:
        args.random_init = True
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if args.pair:
        jobs = []
        for fp32, int8 in args.pair:
            shape = session(fp32, 1).get_inputs()[0].shape
            jobs.append((Path(fp32), Path(int8), (int(shape[2]), int(shape[3]))))
    else:
        jobs = [build_pair(args, size, workdir) for size in parse_sizes(args.sizes)]

    load_before = os.getloadavg()
    rows = []
    for fp32, int8, size in jobs:
        ops = optimized_op_counts(int8, threads=args.threads)
        r = time_pair(fp32, int8, size, args.threads, args.runs, args.warmup)
        r.update(size=size, qlinearconv=ops.get("QLinearConv", 0), float_conv=ops.get("Conv", 0) + ops.get("FusedConv", 0))
        rows.append(r)
    load_after = os.getloadavg()

    print(f"ONNX Runtime {ort.__version__} CPU, {cpu_name()}, {os.cpu_count()} cores, "
          f"intra_op_threads={args.threads}, median of {args.runs} interleaved runs after {args.warmup} warm-up")
    print(f"{'input':>10}  {'fp32 ms':>9}  {'int8 ms':>9}  {'speed-up':>8}  int8 kernels after optimization")
    for r in rows:
        h, w = r["size"]
        print(f"{f'{h}x{w}':>10}  {r['fp32_ms']:9.1f}  {r['int8_ms']:9.1f}  {r['fp32_ms'] / r['int8_ms']:7.2f}x  "
              f"{r['qlinearconv']} QLinearConv, {r['float_conv']} float Conv")
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
