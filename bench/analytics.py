"""Cost of scene analytics on the CPU path: per frame, the app's own steps (preprocess,
inference, overlay) with and without `Analytics.process` (4 zones, 5 watched classes, 2
rules, coverage log on), on the street clip at the model's 352x480. Prints the analytics
time per frame and its share of the frame time. The two are timed on the same frames,
interleaved, so a loaded machine slows both alike.

--broker-outage: the whole app instead (run_camera.py processes, `--loop --max-frames N` on the
street clip, as fast as the CPU goes): analytics off; analytics on with a real mosquitto
broker up; and the same with the broker killed once a third of the frames are written (events
wait in the bounded queue; those still waiting at the end are dropped and counted). Rounds
interleave the three, each going first in turn, so load slows them alike; prints each one's
fps (the app's own summary) and its ratio to "off".

    python bench/analytics.py --model artifacts/camvid.onnx [--frames 60] [--threads 2]
    python bench/analytics.py --model artifacts/camvid.onnx --broker-outage [--frames 150] [--rounds 3]
"""
from __future__ import annotations

import argparse
import platform
import re
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
from app.analytics.specs import parse_camera_analytics
from app.settings import AnalyticsSettings  # noqa: E402
from app.frames import Frame  # noqa: E402
from core.overlay import palette_bgr, render_overlay  # noqa: E402

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


def run_app(args, tmp: Path, mode: str) -> tuple[float, str]:
    """One run_camera.py run; mode 'off', 'broker up' or 'broker killed' (when the coverage log
    has a third of the frames). Returns (fps, the app's summary lines)."""
    import yaml

    cmd = [sys.executable, str(ROOT / "run_camera.py"), "--source", str(DATA / "samples" / "camvid_0016E5_15fps.mp4"),
           "--loop", "--max-frames", str(args.frames), "--model", args.model, "--output", "null"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    broker = None
    coverage = tmp / f"coverage_{mode.replace(' ', '_')}.csv"
    coverage.unlink(missing_ok=True)
    if mode != "off":
        from testkit.analytics_helpers import MOSQUITTO, Broker   # the analytics tests' real mosquitto

        if MOSQUITTO is None:
            raise SystemExit("--broker-outage needs mosquitto: apt-get install mosquitto")
        config = tmp / "zones.yaml"
        config.write_text(yaml.safe_dump({"zones": ZONES, "rules": RULES}))
        broker = Broker(tmp).start()
        cmd += ["--config", str(config), "--mqtt", broker.url, "--coverage-log", str(coverage)]
    app = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if mode == "broker killed":
            while app.poll() is None:   # the coverage log: a header, then a row per frame
                if coverage.is_file() and coverage.read_text().count("\n") > args.frames // 3:
                    broker.proc.kill()   # a crash, not a clean shutdown
                    break
                time.sleep(0.05)
        _, err = app.communicate(timeout=1800)
    finally:
        if broker is not None:
            broker.stop()
    if app.returncode != 0:
        raise SystemExit(f"run_camera.py ({mode}) exited {app.returncode}: {err.strip()[-500:]}")
    line = next((x for x in err.splitlines() if re.search(r"frames \d+\s+written", x)), "")
    fps = re.search(r"fps ([0-9.]+)", line)
    if not fps:
        raise SystemExit(f"run_camera.py ({mode}) printed no summary: {err.strip()[-500:]}")
    events = next((x.strip() for x in err.splitlines() if x.strip().startswith("events:")), "")
    return float(fps.group(1)), (line.strip() + ("  |  " + events if events else ""))


def broker_outage(args) -> int:
    modes = ["off", "broker up", "broker killed"]
    fps = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in modes[r % 3:] + modes[:r % 3]:   # each mode goes first in turn
                value, line = run_app(args, Path(tmp), mode)
                fps[mode].append(value)
                print(f"round {r + 1} {mode:13s} fps {value:6.2f}   {line}", flush=True)
    base = statistics.median(fps["off"])
    print(f"CPU: {cpu_name()}; model {Path(args.model).name}; {args.frames} frames per run, {args.rounds} rounds "
          f"(the broker killed after a third of the frames); {len(ZONES)} zones, {len(RULES)} rules, "
          "MQTT + coverage log when on")
    print("| run | fps (median) | vs off |\n|---|---:|---:|")
    for mode in modes:
        m = statistics.median(fps[mode])
        print(f"| analytics {mode} | {m:.2f} | {m / base:.3f} |")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a 352x480 .onnx (e.g. the CamVid model)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--broker-outage", action="store_true",
                   help="the whole app: fps with analytics off, on (MQTT broker up) and on with the broker killed mid-run")
    p.add_argument("--rounds", type=int, default=3, help="--broker-outage: interleaved rounds (default 3)")
    args = p.parse_args()
    if args.broker_outage:
        return broker_outage(args)
    import av

    from engines.load import load_engine

    engine = load_engine(args.model, threads=args.threads)   # one frame at a time: the frame's own time
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
            x = engine.preprocess(image)
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
