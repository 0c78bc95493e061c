"""Cameras per box, measured against the box's limit: the cost of one camera alone, the limit
it implies, and what N live cameras of the same configuration reach, in one run.

    python bench/cameras_per_box.py --source-size 1920x1080                        # 1080p cameras
    python bench/cameras_per_box.py --source-size 1920x1080 --detect-size 640x360  # sub + main stream
    python bench/cameras_per_box.py --source-size 1920x1080 --seconds 10 --max-cameras 6

The streams are the street clip scaled with ffmpeg as real IP cameras send them (H.264,
`-preset veryfast -crf 23 -g 30 -r 15`); with --detect-size a sub stream and a main stream
of the same frames and timestamps. Each camera: output null, analytics on (two zones, two
rules); with --detect-size a two-input camera (detect = sub stream, record = main stream,
recording on: packet copy into segments under the workdir).

1. Cost: ONE camera of the configuration through the app's own Session (its readers,
   preprocess, engine, analytics, recording), not paced, --frames frames: this process's CPU
   time (resource.getrusage: every thread, the engine's included) per frame = core-ms per
   frame. The box's limit = cores x 1000 / core-ms per frame, in frames per second.
   With --detect-size each input alone too: the sub stream as a one-input camera, and the
   main stream's packet copy into segments (app/recording.py's Recording), per packet.
2. Saturation: N cameras of the configuration, --realtime --loop, through one Session (what
   `run_camera.py --config` builds; the engine loaded once, outside the timing), N = 1, 2, ...
   until the cameras ask for more frames than the box's limit (N x 15 fps >= limit) and a run
   drops >= 1% of its frames (or --max-cameras). The aggregate fps at saturation
   is the highest fps in all (frames written / wall seconds) the runs reached; the ratio is
   that over the limit. A camera count fits when it drops < 1%. Each run's CPU seconds over
   its wall seconds are the cores it got: on a box shared with other work fewer than it has,
   so the limit on the cores it got, and that ratio, are printed too (it is the core-ms per
   frame alone over the core-ms per frame written live: what the live run wastes on
   dropped frames, pacing and contention).

The model: --model (default artifacts/camvid.onnx, exported from the shared CamVid checkpoint
when absent; --int8 calibrates it with `bisenet calibrate` first, as the app would run it).
The load average before and after is printed: on a shared box both numbers move with the
other work; their ratio, measured in the same minutes, is the meaningful part.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
CLIP = SHARED / "data" / "samples" / "camvid_0016E5_15fps.mp4"
CHECKPOINT = SHARED / "models" / "camvid_r18-d32_cpu.pth"
MODEL = REPO / "artifacts" / "camvid.onnx"
FPS = 15
# Two zones and two rules on classes both CamVid and Cityscapes models have (road, car).
ANALYTICS = (
    "zones:\n"
    "  - {name: lane, polygon: [[0.35, 0.55], [0.65, 0.55], [0.85, 1.0], [0.15, 1.0]], classes: [road, car]}\n"
    "  - {name: kerb, polygon: [[0.75, 0.5], [1.0, 0.5], [1.0, 1.0], [0.8, 1.0]], classes: [car, road]}\n"
    "rules:\n"
    "  - {name: kerb_cars, zone: kerb, class: car, above: 0.25, for_s: 0.3, clear_s: 0.5}\n"
    "  - {name: lane_clear, zone: lane, class: road, below: 0.2, for_s: 0.3, clear_s: 0.5}\n")


def size_wh(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give WIDTHxHEIGHT, e.g. 1920x1080") from None
    if w < 16 or h < 16 or w % 2 or h % 2:
        raise argparse.ArgumentTypeError(f"{text!r}: even sizes of at least 16x16, e.g. 1920x1080")
    return w, h


def make_streams(workdir: Path, source: tuple, detect: tuple | None) -> tuple[Path, Path | None]:
    """(main stream, sub stream or None) of the street clip, made once under workdir by ONE
    ffmpeg run (both outputs from the same decoded frames: the same timestamps)."""
    main = workdir / f"street_{source[0]}x{source[1]}.mp4"
    sub = workdir / f"street_{detect[0]}x{detect[1]}.mp4" if detect else None
    wanted = [(main, source)] + ([(sub, detect)] if sub else [])
    todo = [(p, s) for p, s in wanted if not p.is_file()]
    if todo:
        if shutil.which("ffmpeg") is None:
            raise SystemExit("ffmpeg not found: install it (apt-get install ffmpeg) to make the camera streams")
        cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(CLIP)]
        for path, (w, h) in todo:
            cmd += ["-vf", f"scale={w}:{h}", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "30",
                    "-r", str(FPS), "-an", str(path) + ".part.mp4"]
        subprocess.run(cmd, check=True, timeout=600)
        for path, _ in todo:
            os.replace(str(path) + ".part.mp4", path)
    return main, sub


def write_config(path: Path, cameras: int, main: Path, sub: Path | None, record_dir: Path) -> Path:
    """A preset of `cameras` cameras: single-input (main) or two-input (detect = sub, record = main)."""
    text = ANALYTICS
    if sub:
        text += f"record: {{dir: {record_dir}, segment_s: 10}}\n"
    text += "cameras:\n"
    for i in range(cameras):
        if sub:
            text += (f"  - name: cam{i}\n    inputs:\n      - {{path: {sub}, roles: [detect]}}\n"
                     f"      - {{path: {main}, roles: [record]}}\n")
        else:
            text += f"  - {{name: cam{i}, source: {main}}}\n"
    path.write_text(text)
    return path


def bisenet(*args) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-m", "app.cli", *map(str, args)], cwd=REPO, env=env, check=True)


def model_path(args) -> Path:
    model = Path(args.model)
    if not model.is_file():
        if model != MODEL:
            raise SystemExit(f"{model} not found: give an .onnx model, or leave --model out to export CamVid's")
        if not CHECKPOINT.is_file():
            raise SystemExit(f"{CHECKPOINT} not found: the bench needs the shared CamVid checkpoint or --model")
        model.parent.mkdir(parents=True, exist_ok=True)
        bisenet("export", "--model", "bisenetv1_r18-d32_camvid-360x480", "--checkpoint", CHECKPOINT,
                "--size", "352x480", "-o", model)
    if args.int8:
        int8 = model.with_suffix(".int8.onnx")
        if not int8.is_file():
            bisenet("calibrate", "--onnx", model, "--data", "camvid", "--num-images", 64, "--val", "camvid",
                    "--val-limit", 20, "--gate-backend", "openvino", "--quiet", "-o", int8)
        model = int8
    return model


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_session(engine, model: Path, config: Path, frames: int, realtime: bool) -> dict:
    """The preset's cameras through the app's Session on `engine` (loaded once, outside the
    timing), `frames` frames per camera, output null: this process's CPU seconds and the wall
    seconds of session.run(), and the run's summary (captured/written/dropped, fps)."""
    from app.session import Session
    from app.settings import build

    flags = {"model": str(model), "loop": True, "max_frames": frames, "output": ["null"]}
    settings = build(flags | ({"realtime": True} if realtime else {}), config=str(config))
    session = Session(settings, engine)
    try:
        c0, t0 = cpu_s(), time.perf_counter()
        session.run()
        cpu, wall = cpu_s() - c0, time.perf_counter() - t0
    finally:
        session.close()
    return {"cpu_s": cpu, "wall_s": wall, **session.recorder.summary(session.pipeline.captured)}


def camera_cost(engine, model: Path, config: Path, frames: int, warmup: int = 5) -> dict:
    """One camera of the preset, not paced: core-ms per frame (this process's CPU time, every
    thread, over `frames` frames) and wall ms per frame."""
    run_session(engine, model, config, warmup, realtime=False)   # first inferences allocate
    r = run_session(engine, model, config, frames, realtime=False)
    if r["written"] != frames:
        raise SystemExit(f"the cost run wrote {r['written']} of {frames} frames: {r}")
    return {"core_ms": 1000 * r["cpu_s"] / frames, "wall_ms": 1000 * r["wall_s"] / frames}


def record_cost(main: Path, folder: Path) -> dict:
    """The record input alone: the main stream copied by packets into segments (app/recording.py,
    never decoded): core-ms per packet (a packet is a frame)."""
    from app.recording import Recording, open_record_input
    from app.settings import CameraSettings

    recording = Recording(open_record_input(str(main), CameraSettings.of({"name": "rec"})), folder, "rec",
                          segment_s=10)
    c0 = cpu_s()
    recording.start()
    recording.close()   # waits for the whole file's copy
    cpu = cpu_s() - c0
    return {"core_ms": 1000 * cpu / max(recording.packets, 1), "packets": recording.packets,
            "decoded": recording.decoded}


def loadavg() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def run_cameras(engine, model: Path, config: Path, cameras: int, seconds: float) -> dict:
    """N live cameras (--realtime --loop): dropped share, fps in all, and the cores this run
    got (its CPU seconds over its wall seconds: below the box's cores when others share it)."""
    before = loadavg()
    r = run_session(engine, model, config, int(FPS * seconds), realtime=True)
    after = loadavg()
    captured, dropped = r["captured"], r["dropped"]
    return {"cameras": cameras, "captured": captured, "written": r["written"], "dropped": dropped,
            "dropped_pct": 100.0 * dropped / max(captured, 1), "fps": r["written"] / r["wall_s"],
            "cores_got": r["cpu_s"] / r["wall_s"], "load_before": before, "load_after": after}


def saturate(engine, model, workdir, main_stream, sub_stream, record_dir, args, limit: float) -> list:
    """N = 1, 2, ... cameras until the cameras ask for more frames than the box's limit and a
    run drops >= 1% (saturated: what the app then reaches is its throughput), or --max-cameras.
    A camera count whose frames fit under the limit but drop >= 1% is not saturation: it is
    counted against `cameras < 1% dropped`, and N goes on."""
    rows = []
    for n in range(1, args.max_cameras + 1):
        config = write_config(workdir / f"cams{n}.yaml", n, main_stream, sub_stream, record_dir)
        row = run_cameras(engine, model, config, n, args.seconds)
        rows.append(row)
        print(f"{n} cameras: dropped {row['dropped_pct']:5.2f}% ({row['dropped']}/{row['captured']}), "
              f"{row['fps']:.1f} fps in all on {row['cores_got']:.2f} cores; load {row['load_before']} -> "
              f"{row['load_after']}", file=sys.stderr, flush=True)
        if row["dropped_pct"] >= 1 and n * FPS >= limit:
            break
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--source-size", type=size_wh, default=(1920, 1080),
                   help="the camera's (main) stream WxH (default 1920x1080)")
    p.add_argument("--detect-size", type=size_wh,
                   help="a sub stream WxH for detection: two-input cameras, the main stream recorded")
    p.add_argument("--model", default=str(MODEL), help="the .onnx model (default artifacts/camvid.onnx, "
                   "exported from ../shared/models/camvid_r18-d32_cpu.pth when absent)")
    p.add_argument("--int8", action="store_true", help="calibrate the model to INT8 first (bisenet calibrate)")
    p.add_argument("--frames", type=int, default=60, help="frames of the one-camera cost run (default 60)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds of each saturation run (default 10)")
    p.add_argument("--max-cameras", type=int, default=8, help="the most cameras tried (default 8)")
    p.add_argument("--workdir", default="artifacts/cameras_per_box")
    args = p.parse_args(argv)
    if not CLIP.is_file():
        raise SystemExit(f"{CLIP} not found: the bench makes its streams from the shared street clip")
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = model_path(args)
    main_stream, sub_stream = make_streams(workdir, args.source_size, args.detect_size)
    record_dir = workdir / "recordings"
    shutil.rmtree(record_dir, ignore_errors=True)
    what = (f"{args.detect_size[0]}x{args.detect_size[1]} detect + {args.source_size[0]}x{args.source_size[1]} "
            f"record" if sub_stream else f"{args.source_size[0]}x{args.source_size[1]}")

    from engines.cpu_features import detect
    cpu = detect()
    start_load = loadavg()
    print(f"cpu: {cpu.summary()}; load average at start {start_load}", file=sys.stderr, flush=True)
    from app.session import load_engine
    from app.settings import build

    one = write_config(workdir / "one.yaml", 1, main_stream, sub_stream, record_dir)
    engine = load_engine(build({"model": str(model), "output": ["null"]}, config=str(one)))
    try:
        cost = camera_cost(engine, model, one, args.frames)
        inputs = []   # each input alone: (what, core-ms per frame, how)
        if sub_stream:
            alone = camera_cost(engine, model, write_config(workdir / "detect.yaml", 1, sub_stream, None, record_dir),
                                args.frames)
            inputs.append(("detect input alone (sub stream: decode, preprocess, inference, analytics)",
                           alone["core_ms"], ""))
            rec = record_cost(main_stream, workdir / "record-alone")
            inputs.append(("record input alone (main stream: packet copy into segments)", rec["core_ms"],
                           f", {rec['packets']} packets, decoded frames {rec['decoded']}; "
                           f"{rec['core_ms'] * FPS / 10:.2f}% of a core at {FPS} fps"))
        limit = cpu.cores * 1000 / cost["core_ms"]
        rows = saturate(engine, model, workdir, main_stream, sub_stream, record_dir, args, limit)
        describe = engine.describe()
    finally:
        engine.close()

    end_load = loadavg()
    top = max(rows, key=lambda r: r["fps"])
    saturation = top["fps"]
    got_limit = top["cores_got"] * 1000 / cost["core_ms"]
    fits = max((r["cameras"] for r in rows if r["dropped_pct"] < 1), default=0)
    saturated = rows[-1]["dropped_pct"] >= 1 and rows[-1]["cameras"] * FPS >= limit

    print(f"\n{'cams':>4} {'dropped %':>9} {'fps in all':>10} {'cores got':>9}  load before -> after")
    for r in rows:
        print(f"{r['cameras']:>4} {r['dropped_pct']:9.2f} {r['fps']:10.1f} {r['cores_got']:9.2f}  "
              f"{r['load_before']} -> {r['load_after']}")
    print(f"\nconfiguration  {what}, {FPS} fps, output null, analytics on"
          f"{', recording by packet copy' if sub_stream else ''}; model {model.name} ({describe})")
    print(f"cpu            {cpu.model}, {cpu.cores} cores; load average {start_load} -> {end_load}")
    print(f"cost           {cost['core_ms']:.1f} core-ms per camera frame (one camera alone, not paced; "
          f"{cost['wall_ms']:.1f} ms wall)")
    for name, core_ms, how in inputs:
        print(f"               {core_ms:.2f} core-ms per frame: {name}{how}")
    print(f"box limit      {limit:.1f} fps ({cpu.cores} x 1000 / {cost['core_ms']:.1f})")
    print(f"saturation     {saturation:.1f} fps in all"
          f"{'' if saturated else f' (not saturated at {args.max_cameras} cameras: raise --max-cameras)'}")
    print(f"ratio          {saturation / limit:.2f} of the box's limit")
    print(f"on the cores   that run got {top['cores_got']:.2f} of {cpu.cores} cores (less when others share the box): "
          f"limit {got_limit:.1f} fps on those, ratio {saturation / got_limit:.2f} (= core-ms per frame alone / "
          f"live: {cost['core_ms']:.1f} / {1000 * top['cores_got'] / saturation:.1f})")
    print(f"cameras        {fits} at {FPS} fps with < 1% dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
