"""Many cameras, one engine: aggregate throughput against the model alone, per-camera fairness
and latency, for N = 1, 2, 4, 8 cameras, with a batch-1 model and a dynamic-batch model.

    python bench/multistream.py                                  # trained CamVid R18 at 352x480
    python bench/multistream.py --size 176x240 --frames 30 --cameras 1,2,4 --modes file

Every camera is the street clip, looped. Modes:
  file      read as fast as the pipeline takes frames (nothing dropped): throughput
  realtime  each camera paced at the clip's 15 fps (--realtime; the newest frame wins): latency
  processes today's way without this feature: N run_camera.py processes at once, one camera and
            one engine each (files, batch-1 model); agg = the sum of their own fps
Columns:
  batch     frames per inference: the most the engine takes for N cameras / the mean seen in the log
  model     model-only fps: engine.infer on a batch of that size back to back, frames per second,
            measured right before and right after the pipeline run (their mean), same engine
  agg       all cameras' written frames per second (the pipeline: capture, scheduler,
            preprocess, inference, overlay, null output)
  ratio     agg / model (file mode: 1.0 = the app adds nothing to the model's time)
  spread    the fastest camera's fps / the slowest's (1.0 = perfectly fair)
  e2e       capture -> written ms: the median of the cameras' p50, the worst camera's p99
The model is exported from the trained CamVid checkpoint in ../shared/models when it is
there (random weights otherwise: the speed of a network does not depend on its weights).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.session import Session  # noqa: E402
from app.settings import build as run_settings  # noqa: E402
from core.preprocess import preprocess   # noqa: E402
from engines.onnx_engine import OnnxEngine  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared" / "data" / "samples" / "camvid_0016E5_15fps.mp4"
CHECKPOINT = REPO.parent / "shared" / "models" / "camvid_r18-d32_cpu.pth"
CONFIG = "bisenetv1_r18-d32_camvid-360x480"


def export_models(size_hw, folder: Path) -> dict:
    from engines.export import export_onnx
    from core.model_config import load_model_config

    cfg = load_model_config(CONFIG)
    ckpt = CHECKPOINT if CHECKPOINT.is_file() else None
    return {kind: export_onnx(cfg, ckpt, folder / f"{kind}.onnx", size_hw, random_init=ckpt is None, **kw)
            for kind, kw in (("batch-1", {}), ("batch-N", {"dynamic_batch": True}))}


def model_only_fps(engine, image, batch: int, seconds: float) -> float:
    info = engine.info
    x = np.concatenate([preprocess(image, info.input_size, info.mean, info.std, engine.input_dtype)] * batch)
    engine.infer(x)   # warm up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        engine.infer(x)
        n += batch
    return n / (time.perf_counter() - t0)


def pipeline_run(engine, cameras: int, frames: int, realtime: bool, seconds: float) -> dict:
    """Files: `frames` per camera. Realtime: all cameras for the same `seconds`, then a stop
    (a frame count would end the cameras opened first earlier and skew the spread)."""
    settings = run_settings({"source": [str(SAMPLE)] * cameras, "loop": True, "realtime": realtime,
                             "output": ["null"], **({} if realtime else {"max_frames": frames})})
    session = Session(settings, engine, log=lambda msg: None)   # what `bisenet run` builds
    p, recorder = session.pipeline, session.recorder
    if realtime:
        timer = threading.Timer(seconds, session.stop, kwargs={"reason": "time is up", "quiet": True})
        timer.start()
    try:
        session.run()
    finally:
        session.close()
    s = recorder.summary(p.captured_by_camera())
    assert s["unaccounted"] == 0, s
    if not realtime:
        assert s["dropped"] == 0 and s["written"] == cameras * frames, s
    per = s["cameras"].values()
    fps = [c["fps"] for c in per]
    return {"agg": s["fps"], "batch": s["mean_batch"], "spread": max(fps) / min(fps) if min(fps) > 0 else float("inf"),
            "p50": statistics.median(c["stages"]["e2e"]["p50"] for c in per),
            "p99": max(c["stages"]["e2e"]["p99"] for c in per), "dropped": s["dropped"],
            "batch_limit": p.scheduler.batch_size}


def processes_run(model: Path, cameras: int, frames: int, threads: int | None) -> dict:
    cmd = [sys.executable, str(REPO / "run_camera.py"), "--source", str(SAMPLE), "--loop", "--max-frames", str(frames),
           "--model", str(model), "--output", "null", *(["--threads", str(threads)] if threads else [])]
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(cameras)]
    fps, p50, p99 = [], [], []
    for proc in procs:
        err = proc.communicate()[1]
        m = re.search(r"written (\d+)  dropped 0  fps ([\d.]+)", err)
        e2e = re.search(r"^e2e +([\d.]+) +[\d.]+ +([\d.]+)", err, re.M)
        if proc.returncode != 0 or not m or int(m.group(1)) != frames or not e2e:
            raise RuntimeError(f"run_camera.py failed: {err[-500:]}")
        fps.append(float(m.group(2)))
        p50.append(float(e2e.group(1)))
        p99.append(float(e2e.group(2)))
    return {"agg": sum(fps), "batch": 1.0, "spread": max(fps) / min(fps), "p50": statistics.median(p50),
            "p99": max(p99), "dropped": 0}


def main() -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="352x480", help="model input HxW (default 352x480)")
    ap.add_argument("--cameras", default="1,2,4,8", help="camera counts (default 1,2,4,8)")
    ap.add_argument("--frames", type=int, default=40, help="frames per camera in file mode (default 40)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds per realtime run (default 6)")
    ap.add_argument("--modes", default="file,processes,realtime",
                    help="comma list of file, processes, realtime (default: all three)")
    ap.add_argument("--model-seconds", type=float, default=2.0, help="seconds per model-only measurement")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    args = ap.parse_args()
    if not SAMPLE.is_file():
        print(f"no sample clip at {SAMPLE}", file=sys.stderr)
        return 2
    size_hw = tuple(int(v) for v in args.size.lower().split("x"))
    counts = [int(v) for v in args.cameras.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    import av
    with av.open(str(SAMPLE)) as c:
        image = next(c.decode(video=0)).to_ndarray(format="bgr24")

    with tempfile.TemporaryDirectory() as tmp:
        models = export_models(size_hw, Path(tmp))
        engines = {kind: OnnxEngine(path, threads=args.threads) for kind, path in models.items()}
        print(f"# {CONFIG} {'trained' if CHECKPOINT.is_file() else 'random'} weights, input {args.size}, "
              f"ONNX Runtime CPU, threads {args.threads or 'default'}, {os.cpu_count()} CPUs; "
              f"load average at start {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        print(f"{'mode':<10}{'N':>3} {'model':<8}{'batch':>10}{'model fps':>10}{'agg fps':>9}{'ratio':>7}"
              f"{'spread':>8}{'e2e p50':>9}{'e2e p99':>9}{'dropped':>8}")
        for mode in modes:
            realtime = mode == "realtime"
            for n in counts:
                for kind, engine in engines.items():
                    if mode == "processes" and kind != "batch-1":
                        continue
                    b = engine.batch_limit(n) if mode != "processes" else 1
                    before = model_only_fps(engine, image, b, args.model_seconds)
                    frames = args.frames
                    if mode == "processes":
                        r = processes_run(models[kind], n, frames, args.threads)
                    else:
                        r = pipeline_run(engine, n, frames, realtime, args.seconds)
                    after = model_only_fps(engine, image, b, args.model_seconds)
                    model = (before + after) / 2
                    batch = f"{b}/{r['batch']:.2f}"
                    print(f"{mode:<10}{n:>3} {kind:<8}{batch:>10}{model:>10.2f}"
                          f"{r['agg']:>9.2f}{r['agg'] / model:>7.2f}{r['spread']:>8.2f}{r['p50']:>9.0f}"
                          f"{r['p99']:>9.0f}{r['dropped']:>8}", flush=True)
        print(f"# load average at end {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
        for engine in engines.values():
            engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
