"""The CPU overlay's cost per frame at camera sizes: before and now, side by side, in one run.

    python bench/overlay.py                         # 352x480 labels onto 480x360 ... 3840x2160 frames
    python bench/overlay.py --labels 512x1024 --modes overlay,side-by-side --repeats 40

before:      the exact fixed-point overlay as it was: the label map upsampled to full size, two
             16-bit cv2.LUT lookups (image term, color term), an add and a shift, full size.
now:         core.overlay.render_overlay: palette and column gather at the label map's height,
             a row gather to full size, one cv2.addWeighted with exact weights.
plain:       cv2.LUT of a full-size 3-channel label image + cv2.addWeighted (round half to even,
             not the exact formula): the yardstick the overlay was measured against.
Before and now give the same pixels on every size and mode (checked; exit 1 if not). Rounds
interleave the three so a busy machine slows each alike. Per call: the median wall time, the
least wall time (min: on a shared machine, the closer to what a quiet one gives) and the median
CPU time of all threads (cpu: what other processes' load inflates least), in ms.
Frame sizes are WxH (as cameras say them), the label map HxW (as models say theirs).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.int8_speed import cpu_name  # noqa: E402
from core.overlay import MODES, nearest_indices, palette_bgr, render_overlay  # noqa: E402

SIZES = "480x360,1280x720,1920x1080,3840x2160"


def render_overlay_before(image_bgr, labels, lut_bgr, alpha=0.5, mode="overlay"):
    """core/overlay.py's render_overlay before the fast path, kept here to measure against."""
    height, width = image_bgr.shape[:2]
    h, w = labels.shape
    up = labels.astype(np.uint8, copy=False)
    if (h, w) != (height, width):
        up = np.take(np.take(up, nearest_indices(height, h), axis=0), nearest_indices(width, w), axis=1)
    up3 = cv2.merge([up, up, up])
    if mode == "mask":
        return cv2.LUT(up3, lut_bgr.reshape(256, 1, 3))
    a = int(round(alpha * 256))
    image_term = (np.arange(256, dtype=np.uint16) * (256 - a) + 128).astype(np.uint16)
    color_term = (lut_bgr.astype(np.uint16) * a).reshape(256, 1, 3)
    total = cv2.add(cv2.LUT(np.ascontiguousarray(image_bgr), image_term), cv2.LUT(up3, color_term))
    blended = np.empty((height, width, 3), np.uint8)
    np.right_shift(total, 8, out=blended, casting="unsafe")
    if mode == "side-by-side":
        return np.concatenate([image_bgr, blended], axis=1)
    return blended


def fail(message: str):
    """A bad option: one line saying what to do, exit 2."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def pair(text: str, what: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        fail(f"{what} must look like 1920x1080, got {text!r}")
    if a <= 0 or b <= 0:
        fail(f"{what} must be positive, got {text!r}")
    return a, b


def measure(frame_wh, labels_hw, mode, repeats, rng) -> dict:
    width, height = frame_wh
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    labels = rng.integers(0, 19, labels_hw).astype(np.int32)
    lut = palette_bgr(rng.integers(0, 256, (19, 3)))
    up = rng.integers(0, 19, (height, width), dtype=np.uint8)
    up3 = cv2.merge([up, up, up])
    calls = {"before": lambda: render_overlay_before(image, labels, lut, 0.5, mode),
             "now": lambda: render_overlay(image, labels, lut, 0.5, mode),
             "plain": lambda: cv2.addWeighted(image, 0.5, cv2.LUT(up3, lut.reshape(256, 1, 3)), 0.5, 0)}
    same = np.array_equal(calls["before"](), calls["now"]())
    wall = {name: [] for name in calls}
    cpu = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            c0, t0 = time.process_time(), time.perf_counter()
            call()
            wall[name].append((time.perf_counter() - t0) * 1000)
            cpu[name].append((time.process_time() - c0) * 1000)
    return {"same": same, "median": {n: statistics.median(t) for n, t in wall.items()},
            "min": {n: min(t) for n, t in wall.items()}, "cpu": {n: statistics.median(t) for n, t in cpu.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--labels", default="352x480", help="label map HxW, the model's input size (default 352x480)")
    ap.add_argument("--sizes", default=SIZES, help=f"frame sizes WxH, comma-separated (default {SIZES})")
    ap.add_argument("--modes", default="overlay", help=f"comma-separated, of {', '.join(MODES)} (default overlay)")
    ap.add_argument("--repeats", type=int, default=20, help="timed calls of each, per size and mode (default 20)")
    ap.add_argument("--threads", type=int, help="OpenCV threads (default: OpenCV's own, one per core)")
    args = ap.parse_args(argv)
    labels_hw = pair(args.labels, "--labels")
    sizes = [pair(s, "--sizes") for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad:
        fail(f"unknown mode {bad[0]!r} in --modes: use {', '.join(MODES)}")
    if args.repeats < 1:
        fail("--repeats must be at least 1")
    if args.threads:
        cv2.setNumThreads(args.threads)

    load = os.getloadavg()
    print(f"CPU: {cpu_name()}; {os.cpu_count()} cores; OpenCV {cv2.__version__} on {cv2.getNumThreads()} threads; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at start")
    print(f"labels {labels_hw[0]}x{labels_hw[1]} (HxW), alpha 0.5, median of {args.repeats} calls each, in ms")
    stats = ("median", "min", "cpu")
    print(f"{'':24s}" + "".join(f"| {stat:^34s}" for stat in stats))
    print(f"{'frame WxH':>10s} {'mode':>12s} " + "| before    now  plain b/now n/plain" * len(stats) + "  pixels")
    all_same = True
    rng = np.random.default_rng(0)
    for mode in modes:
        for frame_wh in sizes:
            r = measure(frame_wh, labels_hw, mode, args.repeats, rng)
            all_same &= r["same"]
            cells = ""
            for stat in stats:
                before, now, plain = (max(r[stat][name], 1e-9) for name in ("before", "now", "plain"))
                cells += f"| {before:6.2f} {now:6.2f} {plain:6.2f} {before / now:5.2f} {now / plain:7.2f}"
            print(f"{frame_wh[0]:>5d}x{frame_wh[1]:<4d} {mode:>12s} {cells}  {'same' if r['same'] else 'DIFFER'}")
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at end")
    print("before and now: same pixels on every size" if all_same else "FAIL: before and now differ")
    return 0 if all_same else 1


if __name__ == "__main__":
    sys.exit(main())
