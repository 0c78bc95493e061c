"""Pipeline fps against model-only fps on the same ONNX model, and the overlay's cost at 1080p.

    python bench/pipeline.py                        # R18 at 512x1024, random weights (speed only)
    python bench/pipeline.py --model artifacts/r18.onnx --frames 60 --size 352x480

model-only: engine.infer on one preprocessed batch, back to back (no capture, no overlay).
pipeline:   the app's three threads on a video file (no drops), null output: no overlay drawn.
drawn:      the same pipeline drawing every frame's overlay for the null output anyway (what
            the app did before it drew only for outputs that show pixels), in the same rounds.
inference busy: the share of the pipeline's wall time spent inside engine.infer, measured over
            the same seconds as its fps (1.0 = the pipeline adds nothing to the model's time).
limit:      what this box can do with the source decoded in software (bench/cameras_per_box.py's
            rule): cores x 1000 / (model core-ms + decode core-ms per frame), each measured
            alone in the same round (CPU time of the whole process: every decoder and inference
            thread). pipeline/limit is the share of that the app reaches; model-only never
            decodes, so pipeline/model-only cannot pass limit/model-only.
Rounds alternate the two (ABBA order) so a busy machine slows both alike; the ratio is per round and the
median over rounds. A model is exported with random weights when --model is not given: the
speed of a network does not depend on its weights.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.hud import draw_hud, draw_legend  # noqa: E402
from core.overlay import palette_bgr, render_overlay   # noqa: E402
from app.session import Session  # noqa: E402
from app.settings import build as run_settings  # noqa: E402
from app.sources import open_source  # noqa: E402
from engines.load import load_engine  # noqa: E402
from engines.openvino_engine import run_streams  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO.parent / "shared" / "data" / "samples" / "camvid_0016E5_15fps.mp4"
R18 = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"


def model_only_fps(engine, image, frames: int) -> tuple[float, float]:
    """Back to back; an engine with several requests in flight (OpenVINO --ov-streams N) is kept
    as busy as the pipeline keeps it: submitted, its results awaited at the end.
    -> (fps, CPU ms per frame)."""
    batch = engine.preprocess(image)
    t0, c0 = time.perf_counter(), time.process_time()
    if engine.asynchronous:
        for future in [engine.submit(batch) for _ in range(frames)]:
            future.result()
    else:
        for _ in range(frames):
            engine.infer(batch)
    return frames / (time.perf_counter() - t0), (time.process_time() - c0) * 1000 / frames


def decode_core_ms(source: str, frames: int) -> float:
    """CPU ms per frame to decode the source and convert it to BGR, with the app's own reader
    (its decoder threads included), looped as the pipeline's --loop is."""
    reader = open_source(source, {"loop": True})
    c0 = time.process_time()
    try:
        for _ in range(frames):
            reader.read()
    finally:
        reader.close()
    return (time.process_time() - c0) * 1000 / frames


def pipeline_fps(engine, source: str, frames: int, draw: bool = False) -> tuple[float, dict]:
    """The app's own session (what `bisenet run --loop --max-frames N --output null` builds);
    draw: its null output asks for the overlay of every frame (as every output did before)."""
    settings = run_settings({"source": [source], "loop": True, "max_frames": frames, "output": ["null"]})
    session = Session(settings, engine)
    if draw:
        for cam in session.cameras:
            for sink in cam.sinks:
                sink.wants_pixels = lambda: True
    try:
        session.run()
    finally:
        session.close()
    recorder = session.recorder
    s = recorder.summary(session.pipeline.captured)
    assert s["written"] == frames and s["dropped"] == 0, s
    inference = recorder.stats["inference"]
    s["inference_s"] = float(inference.values[:inference.count].sum()) / 1000.0
    return s["fps"], s


def overlay_ms(labels_hw, repeats: int = 20) -> tuple[float, float]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    labels = rng.integers(0, 19, labels_hw).astype(np.int32)
    lut = palette_bgr(rng.integers(0, 256, (19, 3)))
    names = [f"class {i}" for i in range(19)]

    def timed(fn):
        fn()
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1000

    plain = timed(lambda: render_overlay(image, labels, lut, 0.5))

    def annotated():
        out = render_overlay(image, labels, lut, 0.5)
        draw_legend(out, names, lut, set(range(19)))
        draw_hud(out, 30.0, 50.0, 20.0)

    return plain, timed(annotated)


def main() -> int:
    from engines.export import parse_size   # only for the --size flag's parsing

    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--model", help="an .onnx (default: export R18 with random weights at --size)")
    ap.add_argument("--size", default="512x1024", help="model input HxW when exporting (default 512x1024)")
    ap.add_argument("--source", default=str(SAMPLE), help="video file for the pipeline (looped as needed)")
    ap.add_argument("--frames", type=int, default=10, help="frames per measurement (default 10)")
    ap.add_argument("--rounds", type=int, default=6,
                    help="alternating model-only/pipeline rounds (default 6): short rounds, many of them, "
                    "so a shared machine's changing load hits both sides alike")
    ap.add_argument("--threads", type=int, default=None, help="inference threads of the CPU backend")
    ap.add_argument("--providers", default=None, help="ONNX Runtime providers (default cpu)")
    ap.add_argument("--backend", choices=("openvino", "onnxruntime"), help="CPU backend (default: the app's)")
    ap.add_argument("--precision", choices=("fp32", "bf16"), help="OpenVINO float precision (default fp32)")
    ap.add_argument("--ov-streams", type=int, default=None,
                    help="OpenVINO inferences in flight (default: the app's, 2 on 2 or more cores)")
    args = ap.parse_args()

    if args.model:
        model = Path(args.model)
    else:
        from engines.export import export_onnx
        from core.model_config import load_model_config

        h, w = parse_size(args.size)
        tmp = tempfile.TemporaryDirectory(prefix="bench-pipeline-")   # removed at exit
        model = Path(tmp.name) / f"r18_random_{h}x{w}.onnx"
        print(f"exporting {R18} with random weights at {h}x{w} -> {model}", flush=True)
        export_onnx(load_model_config(R18), None, model, (h, w), random_init=True)
    engine = load_engine(str(model), providers=args.providers, threads=args.threads, backend=args.backend,
                         precision=args.precision, ov_streams=args.ov_streams or run_streams(args.threads))
    reader = open_source(args.source)
    first = reader.read()[0]
    reader.close()
    h, w = engine.info.input_size
    print(f"model: {engine.describe()}\nsource: {args.source} ({first.shape[1]}x{first.shape[0]}), "
          f"{args.frames} frames per measurement, {args.rounds} rounds", flush=True)

    model_only_fps(engine, first, 3)   # warm-up: first runs allocate
    cores = os.cpu_count() or 1
    print(f"\n{'round':>6} {'model-only fps':>15} {'pipeline fps':>13} {'ratio':>7} {'inference busy':>15}"
          f" {'drawn fps':>10} {'model core-ms':>14} {'decode core-ms':>15} {'limit fps':>10} {'pipeline/limit':>15}")
    rows = []
    for r in range(args.rounds):
        # ABBA order: a load that rises or falls during a round favors neither side.
        if r % 2 == 0:
            m, m_ms = model_only_fps(engine, first, args.frames)
            dec = decode_core_ms(args.source, args.frames)
            p, summary = pipeline_fps(engine, args.source, args.frames)
            d, drawn = pipeline_fps(engine, args.source, args.frames, draw=True)
        else:
            d, drawn = pipeline_fps(engine, args.source, args.frames, draw=True)
            p, summary = pipeline_fps(engine, args.source, args.frames)
            dec = decode_core_ms(args.source, args.frames)
            m, m_ms = model_only_fps(engine, first, args.frames)
        # busy: the share of the pipeline's wall time its inference thread spent in engine.infer,
        # measured over the same seconds as its fps, so the machine's load swings cancel out.
        b = p * summary["inference_s"] / args.frames
        limit = cores * 1000 / (m_ms + dec)
        rows.append((m, p, p / m, b, d, m_ms, dec, limit, p / limit))
        print(f"{r + 1:>6} {m:>15.2f} {p:>13.2f} {p / m:>7.3f} {b:>15.3f} {d:>10.2f} {m_ms:>14.2f} {dec:>15.2f}"
              f" {limit:>10.2f} {p / limit:>15.3f}", flush=True)
    med = [statistics.median(col) for col in zip(*rows)]
    print(f"median {med[0]:>15.2f} {med[1]:>13.2f} {med[2]:>7.3f} {med[3]:>15.3f} {med[4]:>10.2f} {med[5]:>14.2f}"
          f" {med[6]:>15.2f} {med[7]:>10.2f} {med[8]:>15.3f}")
    print("ratio = pipeline fps / model-only fps (median of per-round ratios); inference busy = pipeline fps x "
          "its own mean inference time; drawn fps = the pipeline drawing every frame's overlay anyway; "
          f"limit = {cores} cores x 1000 / (model + decode core-ms)")
    st = summary["stages"]
    print("last pipeline round, ms p50: " + "  ".join(f"{k} {st[k]['p50']:.1f}" for k in
                                                      ("queue", "preprocess", "inference", "overlay", "sink", "e2e")))
    print(f"overlays drawn: pipeline {summary['overlays_drawn']}, drawn {drawn['overlays_drawn']} of {args.frames}; "
          "overlay stage ms p50 (labels to sinks: overlay, HUD, analytics): pipeline "
          f"{summary['stages']['overlay']['p50']:.2f}, drawn {drawn['stages']['overlay']['p50']:.2f}")

    plain, annotated = overlay_ms((h, w))
    print(f"\noverlay of a 1920x1080 frame from {h}x{w} labels (median of 20): {plain:.1f} ms; "
          f"with legend + HUD: {annotated:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
