"""Decoding a camera's frames for the model: the cost per frame before and now, in one run.

    python bench/decode.py                               # the street clip upscaled to 1920x1080
    python bench/decode.py --model artifacts/camvid.onnx --frames 60 --rounds 3

before:   decode, the full-size frame converted to BGR (to_ndarray), then core/preprocess.py
          (cv2.resize INTER_LINEAR to the model's size, normalize)
now:      decode, one swscale pass straight to the model's size in BGR (app/sources.py's
          PyAVPicture.bgr_at), then core/preprocess.py (no resize left): a frame no output
          shows at full size (app/frames.py's Frame.full_size False); one that is shown keeps
          "before" (the full-size image is made for the output anyway)
nonkey:   decode with skip_frame NONKEY (keyframes only): the decode cost per keyframe and per
          second of video, against decoding every frame
With --model: the labels both inputs give, compared pixel by pixel (agreement %), and the mean
absolute difference of the two BGR images. Rounds interleave the variants so a busy machine
slows each alike. Per frame: the median over rounds of wall ms and of this process's CPU ms
(decoding on one thread, so that CPU time is the frame's own).
The source (default: the street clip scaled to --size with ffmpeg, H.264, GOP 30, 15 fps, as
in docs/cameras.md) is made once under --workdir.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.sources import PyAVPicture  # noqa: E402
from core.preprocess import preprocess  # noqa: E402

STREET = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "samples" / "camvid_0016E5_15fps.mp4"
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


def make_clip(size: str, workdir: Path) -> Path:
    out = workdir / f"street{size}.mp4"
    if not out.is_file():
        if shutil.which("ffmpeg") is None:
            sys.exit("bench/decode.py: needs ffmpeg to make the clip (apt-get install ffmpeg), or pass --source")
        w, h = size.split("x")
        workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(STREET), "-vf", f"scale={w}:{h}",
                        "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", "30", "-r", "15", str(out)],
                       check=True)
    return out


def one_pass(source: Path, variant: str, size_hw: tuple, frames: int) -> dict:
    """Decode (and convert) up to `frames` frames -> {decode, convert, n} in ms of wall and CPU."""
    import av

    h, w = size_hw
    container = av.open(str(source))
    stream = container.streams.video[0]
    stream.thread_count = 1   # one thread: no decoding in the background while a frame converts
    if variant == "nonkey":
        stream.codec_context.skip_frame = "NONKEY"
    it = container.decode(stream)
    wall = {"decode": 0.0, "convert": 0.0}
    cpu = {"decode": 0.0, "convert": 0.0}
    n = 0
    while n < frames:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            frame = next(it)
        except StopIteration:
            break
        t1, c1 = time.perf_counter(), time.process_time()
        if variant == "before":
            preprocess(PyAVPicture(frame).bgr(), size_hw, MEAN, STD)
        elif variant == "now":
            preprocess(PyAVPicture(frame).bgr_at(w, h), size_hw, MEAN, STD)
        t2, c2 = time.perf_counter(), time.process_time()
        wall["decode"] += t1 - t0
        wall["convert"] += t2 - t1
        cpu["decode"] += c1 - c0
        cpu["convert"] += c2 - c1
        n += 1
    container.close()
    return {"n": n, "wall": wall, "cpu": cpu}


def agreement(source: Path, model: str, frames: int) -> dict:
    """Labels of the before and now inputs for the same frames: pixel agreement, image MAD."""
    import av

    from engines.load import load_engine

    engine = load_engine(model)
    h, w = engine.info.input_size
    mean, std = engine.info.mean, engine.info.std
    container = av.open(str(source))
    same = total = 0
    mad = []
    for _, frame in zip(range(frames), container.decode(video=0)):
        picture = PyAVPicture(frame)
        import cv2

        before_img = cv2.resize(picture.bgr(), (w, h), interpolation=cv2.INTER_LINEAR)
        now_img = picture.bgr_at(w, h)
        mad.append(float(np.abs(before_img.astype(np.int16) - now_img).mean()))
        a = np.asarray(engine.infer(preprocess(before_img, (h, w), mean, std, engine.input_dtype)))
        b = np.asarray(engine.infer(preprocess(now_img, (h, w), mean, std, engine.input_dtype)))
        same += int((a == b).sum())
        total += a.size
    container.close()
    engine.close()
    return {"frames": len(mad), "label_agreement_pct": 100.0 * same / max(total, 1),
            "image_mad": statistics.mean(mad) if mad else float("nan"), "size_hw": (h, w)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--source", help="a video file (default: the street clip scaled to --size)")
    p.add_argument("--size", default="1920x1080", help="WxH of the clip made from the street clip (default 1920x1080)")
    p.add_argument("--input-size", default="352x480", help="the model's input HxW (default 352x480; --model's own)")
    p.add_argument("--frames", type=int, default=100, help="frames per pass (default 100)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--model", help="an .onnx: compare the labels of both inputs")
    p.add_argument("--workdir", default="/tmp/bench_decode", help="where the clip is made (default /tmp/bench_decode)")
    args = p.parse_args(argv)
    source = Path(args.source) if args.source else make_clip(args.size, Path(args.workdir))
    size_hw = tuple(int(v) for v in args.input_size.split("x"))
    if args.model:
        from engines.load import load_engine

        engine = load_engine(args.model)
        size_hw = tuple(engine.info.input_size)
        engine.close()
    variants = ("before", "now", "decode", "nonkey")
    results = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v in variants:
            results[v].append(one_pass(source, v, size_hw, args.frames))
    load = os.getloadavg()[0]
    print(f"{source} -> {size_hw[0]}x{size_hw[1]} (HxW); {os.cpu_count()} CPUs, load {load:.2f}; "
          f"{args.rounds} rounds, median per frame")
    print(f"{'variant':<8}{'frames':>7}{'decode ms':>11}{'convert+pre ms':>16}{'total ms':>10}{'cpu ms':>8}"
          f"{'convert+pre cpu':>17}")
    totals = {}
    for v in variants:
        n = results[v][0]["n"]
        dec = statistics.median(r["wall"]["decode"] / r["n"] * 1000 for r in results[v])
        conv = statistics.median(r["wall"]["convert"] / r["n"] * 1000 for r in results[v])
        cpu = statistics.median((r["cpu"]["decode"] + r["cpu"]["convert"]) / r["n"] * 1000 for r in results[v])
        conv_cpu = statistics.median(r["cpu"]["convert"] / r["n"] * 1000 for r in results[v])
        totals[v] = (dec + conv, cpu, n, conv, conv_cpu)
        print(f"{v:<8}{n:>7}{dec:>11.2f}{conv:>16.2f}{dec + conv:>10.2f}{cpu:>8.2f}{conv_cpu:>17.2f}")
    before, now = totals["before"], totals["now"]
    print(f"now/before: convert+preprocess {now[3] / before[3]:.2f} wall, {now[4] / before[4]:.2f} cpu; "
          f"with the decode {now[0] / before[0]:.2f} wall, {now[1] / before[1]:.2f} cpu")
    every, key = totals["decode"], totals["nonkey"]
    per_video_s = key[0] * key[2] / max(every[2], 1)
    print(f"skip_frame nonkey: {key[2]} of {every[2]} frames decoded, {key[0]:.2f} ms per keyframe; "
          f"{per_video_s:.2f} ms per source frame vs {every[0]:.2f} decoding every frame "
          f"({every[0] / max(per_video_s, 1e-9):.1f}x less decode)")
    if args.model:
        a = agreement(source, args.model, min(args.frames, 30))
        print(f"labels before vs now ({a['frames']} frames, {args.model}): {a['label_agreement_pct']:.2f}% of pixels "
              f"agree; BGR mean abs difference {a['image_mad']:.2f} levels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
