"""Cost of scene analytics on the CPU path: per frame, the app's own steps (preprocess,
inference, overlay) with and without `Analytics.process` (4 zones, 5 watched classes, 2
rules, coverage log on), on the street clip at the model's 352x480. Prints the analytics
time per frame and its share of the frame time. The two are timed on the same frames,
interleaved, so a loaded machine slows both alike.

    python bench/analytics.py --model artifacts/camvid.onnx [--frames 60] [--threads 2]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.analytics import Analytics  # noqa: E402
from app.analytics.settings import parse_camera_analytics
from app.settings import AnalyticsSettings  # noqa: E402
from app.frames import Frame  # noqa: E402
from core.overlay import palette_bgr, render_overlay  # noqa: E402
from core.preprocess import preprocess  # noqa: E402

DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()), None)
ZONES = [
    {"name": "lane", "polygon": [[0.35, 0.55], [0.65, 0.55], [0.85, 1.0], [0.15, 1.0]], "classes": ["road", "car"]},
    {"name": "kerb_right", "polygon": [[0.75, 0.5], [1.0, 0.5], [1.0, 1.0], [0.8, 1.0]], "classes": ["car", "pavement"]},
    {"name": "walk_left", "polygon": [[0.0, 0.55], [0.35, 0.55], [0.15, 1.0], [0.0, 1.0]],
     "classes": ["pavement", "pedestrian"]},
    {"name": "sky", "polygon": [[0, 0], [1, 0], [1, 0.3], [0, 0.3]], "classes": ["sky"]},
]
RULES = [{"zone": "kerb_right", "class": "car", "above": 0.25, "for_s": 0.3},
         {"zone": "lane", "class": "pedestrian", "above": 0.02}]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        cores = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("CPU(s)"))
        return f"{name}, {cores} CPUs"
    except Exception:
        return platform.processor() or "unknown CPU"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a 352x480 .onnx (e.g. the CamVid model)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    import av

    from engines.load import load_engine

    engine = load_engine(args.model, threads=args.threads)
    info = engine.info
    classes = list(info.class_names)
    config = parse_camera_analytics(ZONES, RULES, "bench")
    config.check_classes(classes, "bench")
    watched = {c for cs in config.watched().values() for c in cs}
    lut = palette_bgr(info.palette)
    with tempfile.TemporaryDirectory() as tmp:
        analytics = Analytics(AnalyticsSettings(coverage_log=str(Path(tmp) / "cov.csv")), {"cam0": config}, classes)
        images = []
        with av.open(str(DATA / "samples" / "camvid_0016E5_15fps.mp4")) as c:
            for i, f in enumerate(c.decode(video=0)):
                if i >= args.frames:
                    break
                images.append((f.to_ndarray(format="bgr24"), float(f.time)))
        frame_ms, analytics_ms = [], []
        for i, (image, ts) in enumerate(images):
            t0 = time.perf_counter()
            x = preprocess(image, tuple(info.input_size), info.mean, info.std)
            labels = np.asarray(engine.infer(x))[0]
            overlay = render_overlay(image, labels, lut, 0.5, "overlay")
            t1 = time.perf_counter()
            analytics.process("cam0", Frame(i, time.monotonic(), image, ts), labels, overlay)
            t2 = time.perf_counter()
            if i >= 3:   # warm-up
                frame_ms.append((t1 - t0) * 1000)
                analytics_ms.append((t2 - t1) * 1000)
        analytics.close()
    engine.close()
    f, a = statistics.median(frame_ms), statistics.median(analytics_ms)
    print(f"CPU: {cpu_name()}; model {Path(args.model).name} {info.input_size[0]}x{info.input_size[1]}, "
          f"{len(frame_ms)} frames; {len(ZONES)} zones, {len(watched)} watched classes, {len(RULES)} rules, coverage log")
    print("| per frame (median) | ms |\n|---|---:|")
    print(f"| preprocess + inference + overlay (analytics off) | {f:.1f} |")
    print(f"| analytics (histogram, coverage, rules, log) | {a:.2f} |")
    print(f"| analytics share of the frame time | {100 * a / (f + a):.2f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
