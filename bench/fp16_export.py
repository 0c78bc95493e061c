"""fp32 vs fp16 export (`bisenet export --precision fp16`, TensorRT 11's fp16 route) on ONNX Runtime
(CPU), side by side on CamVid val frames: how many labels agree, and ms per frame.

    python bench/fp16_export.py [--frames 101] [--size 352x480]

Needs torch (the export) and the trained CamVid checkpoint in ../shared/models. ONNX Runtime's
CPU fp16 kernels say nothing about GPU speed; the agreement is what carries over.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core.preprocess import preprocess   # noqa: E402
from engines.export import export_onnx  # noqa: E402
from core.model_config import load_model_config   # noqa: E402
from engines.onnx_engine import OnnxEngine  # noqa: E402

MODEL = "bisenetv1_r18-d32_camvid-360x480"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=str(ROOT.parent / "shared" / "models" / "camvid_r18-d32_cpu.pth"))
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "camvid" / "val"))
    ap.add_argument("--frames", type=int, default=101)
    ap.add_argument("--size", default="352x480")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    size = tuple(int(v) for v in args.size.split("x"))
    cfg = load_model_config(MODEL)
    paths = sorted(Path(args.data).glob("*.jpg"))[:args.frames]
    with tempfile.TemporaryDirectory() as tmp:
        engines = {p: OnnxEngine(export_onnx(cfg, args.checkpoint, Path(tmp) / f"m.{p}.onnx", size, precision=p),
                                 threads=args.threads) for p in ("fp32", "fp16")}
        same, ms = [], {"fp32": [], "fp16": []}
        for path in paths:
            x = preprocess(cv2.imread(str(path)), size, cfg.mean, cfg.std)
            labels = {}
            for p, eng in engines.items():
                t0 = time.perf_counter()
                labels[p] = eng.infer(x)
                ms[p].append((time.perf_counter() - t0) * 1e3)
            same.append(float((labels["fp32"] == labels["fp16"]).mean()))
    same = np.asarray(same)
    print(f"{len(paths)} CamVid val frames at {size[0]}x{size[1]}, ONNX Runtime CPU, {args.threads} thread(s)")
    print(f"labels equal to fp32: mean {same.mean():.4%}, worst frame {same.min():.4%} ({paths[int(same.argmin())].name})")
    f32, f16 = np.median(ms["fp32"]), np.median(ms["fp16"])
    print(f"median ms/frame: fp32 {f32:.1f}, fp16 {f16:.1f} (fp16/fp32 = {f16 / f32:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
