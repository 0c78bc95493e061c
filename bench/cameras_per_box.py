"""Cameras per box: N live cameras (the street clip, --realtime --loop, 15 fps each) through
ONE run_camera.py with the CamVid model calibrated to INT8 by `bisenet calibrate` (gated, so
the app picks its precision per CPU), output null: the share of frames dropped.

    python bench/cameras_per_box.py                        # 1..4 cameras, batch-1 and dynamic-batch int8
    python bench/cameras_per_box.py --cameras 4 --seconds 20 --models dynamic

Only the app's own defaults run (backend, precision, batching); the bench adds nothing but
the sources. A camera fits when it drops < 1% of its frames. The load average before and
after each run is printed: a shared box drops frames the model alone would not.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CLIP = SHARED / "data" / "samples" / "camvid_0016E5_15fps.mp4"
CHECKPOINT = SHARED / "models" / "camvid_r18-d32_cpu.pth"
COUNTS = re.compile(r"frames (\d+)\s+written (\d+)\s+dropped (\d+).*?fps ([0-9.]+)")


def bisenet(*args) -> None:
    subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=REPO, check=True)


def build(workdir: Path, dynamic: bool, max_batch: int, calib_images: int = 64, val_limit: int = 20) -> Path:
    """The CamVid model exported (batch 1, or dynamic up to max_batch) and calibrated to INT8
    on calib_images training images, gated on val_limit val images per CPU precision (reused
    when present)."""
    tag = f"dyn{max_batch}" if dynamic else "b1"
    fp32, int8 = workdir / f"camvid_{tag}.onnx", workdir / f"camvid_{tag}.int8.onnx"
    if not fp32.is_file():
        batch = ["--dynamic-batch", "--batch", max_batch] if dynamic else []
        bisenet("export", "--model", "bisenetv1_r18-d32_camvid-360x480", "--checkpoint", CHECKPOINT,
                "--size", "352x480", *batch, "-o", fp32)
    if not int8.is_file():
        bisenet("calibrate", "--onnx", fp32, "--data", "camvid", "--num-images", calib_images, "--val", "camvid",
                "--val-limit", val_limit, "--gate-backend", "openvino", "--quiet", "-o", int8)
    return int8


def run_cameras(model: Path, cameras: int, seconds: float) -> dict:
    frames = int(15 * seconds)
    cmd = [sys.executable, "run_camera.py", *sum((["--source", str(CLIP)] for _ in range(cameras)), []),
           "--realtime", "--loop", "--max-frames", str(frames), "--model", str(model), "--output", "null"]
    before = "/".join(f"{v:.2f}" for v in os.getloadavg())
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=seconds * 4 + 120)
    after = "/".join(f"{v:.2f}" for v in os.getloadavg())
    if r.returncode != 0:
        raise SystemExit(f"run_camera.py failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    model_line = next((line[7:] for line in r.stderr.splitlines() if line.startswith("model: ")), "?")
    found = COUNTS.findall(r.stderr)
    if not found:
        raise SystemExit(f"no counts line in run_camera.py's output:\n{r.stderr[-2000:]}")
    captured, written, dropped, fps = found[-1]
    captured, dropped = int(captured), int(dropped)
    return {"cameras": cameras, "captured": captured, "written": int(written), "dropped": dropped,
            "dropped_pct": 100.0 * dropped / max(captured, 1), "fps": float(fps), "model": model_line,
            "load_before": before, "load_after": after}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--cameras", default="1,2,3,4", help="camera counts (default 1,2,3,4)")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of clip per camera (default 20)")
    p.add_argument("--models", default="b1,dynamic", help="b1 (batch 1), dynamic (batch across cameras) or both")
    p.add_argument("--max-batch", type=int, default=4, help="the dynamic model's largest batch (default 4)")
    p.add_argument("--workdir", default="artifacts/cameras_per_box")
    p.add_argument("--calib-images", type=int, default=64, help="training images the INT8 calibration reads (default 64)")
    p.add_argument("--val-limit", type=int, default=20, help="val images of the accuracy gate (default 20)")
    args = p.parse_args(argv)
    for path in (CLIP, CHECKPOINT):
        if not path.exists():
            raise SystemExit(f"{path} not found: the bench needs the shared street clip and CamVid checkpoint")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for kind in args.models.split(","):
        model = build(workdir, kind == "dynamic", args.max_batch, args.calib_images, args.val_limit)
        for n in (int(v) for v in args.cameras.split(",")):
            row = run_cameras(model, n, args.seconds) | {"kind": kind}
            rows.append(row)
            print(f"{kind:>8} {n} cameras: dropped {row['dropped_pct']:5.2f}% ({row['dropped']}/{row['captured']}), "
                  f"{row['fps']:.1f} fps in all; load {row['load_before']} -> {row['load_after']}", file=sys.stderr)
    print(f"{'model':>8} {'cams':>4} {'dropped %':>9} {'fps':>6}  fits (<1%)  load before -> after   engine")
    for r in rows:
        print(f"{r['kind']:>8} {r['cameras']:>4} {r['dropped_pct']:9.2f} {r['fps']:6.1f}  "
              f"{'yes' if r['dropped_pct'] < 1 else 'no':>10}  {r['load_before']} -> {r['load_after']}   {r['model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
