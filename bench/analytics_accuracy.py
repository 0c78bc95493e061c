"""Scene analytics against ground truth: the street clip's 101 frames are the CamVid val
frames 0016E5_07959 .. 0016E5_08159 in order (../shared/data/README.md), so every decoded
frame has a label map. Per (zone, class): mean absolute error of the model's coverage (the
app's engine and preprocess, labels at the model's 352x480) against the labels' coverage
(360x480; unlabelled pixels count in the zone's area). Events: the same rules run on both
coverage series on the clip's clock (frame / 15 fps); the start times are compared.

    python bench/analytics_accuracy.py --model artifacts/camvid.onnx [--config street-analytics]

(export: bisenet export --model bisenetv1_r18-d32_camvid-360x480
 --checkpoint ../shared/models/camvid_r18-d32_cpu.pth --size 352x480 -o artifacts/camvid.onnx)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.analytics.coverage import coverage_ratios  # noqa: E402
from app.analytics.rules import RuleState  # noqa: E402
from app.analytics.specs import parse_camera_analytics  # noqa: E402
from app.analytics.zones import Zones  # noqa: E402
from core.config_files import config_path  # noqa: E402
from core.preprocess import preprocess  # noqa: E402
from core.validate import load_yaml  # noqa: E402

DATA = next((p / "shared" / "data" for p in ROOT.parents if (p / "shared" / "data").is_dir()),
            ROOT.parent / "shared" / "data")   # ../shared/data beside the checkout (or a worktree's ancestor)
CLIP = DATA / "samples" / "camvid_0016E5_15fps.mp4"


def clip_frames():
    import av

    with av.open(str(CLIP)) as c:
        for frame in c.decode(video=0):
            yield frame.to_ndarray(format="bgr24")


def events(rules, series, fps):
    """{rule name: [(start_s, end_s)]} from a [frames] coverage series per rule."""
    out = {}
    for spec in rules:
        state = RuleState(spec, "cam0")
        spans = []
        for i, cov in enumerate(series[spec.name]):
            for kind, e in state.update(i / fps, cov, i):
                if kind == "end":
                    spans.append((e.start_s, e.end_s))
        for kind, e in state.finish((len(series[spec.name]) - 1) / fps, len(series[spec.name]) - 1):
            spans.append((e.start_s, e.end_s))
        out[spec.name] = spans
    return out


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the CamVid model .onnx (352x480)")
    p.add_argument("--config", default="street-analytics", help="app preset with zones: and rules:")
    p.add_argument("--frames", type=int, default=None, help="the first N frames only (default: all 101)")
    args = p.parse_args()
    from engines.load import load_engine

    preset = load_yaml(config_path("app", args.config) if not args.config.endswith(".yaml") else Path(args.config),
                       "preset")
    engine = load_engine(args.model, threads=None)
    info = engine.info
    classes = list(info.class_names)
    config = parse_camera_analytics(preset.get("zones"), preset.get("rules"), args.config)
    config.check_classes(classes, args.config)
    zones = Zones(config.zones, len(classes) + 1)      # + CamVid's unlabelled id 11 in the labels
    watched = config.watched()
    label_paths = sorted((DATA / "camvid" / "valannot").glob("0016E5_*.png"))[:args.frames]
    model_cov, label_cov = [], []
    for image, label_path in zip(clip_frames(), label_paths):
        x = preprocess(image, tuple(info.input_size), info.mean, info.std)
        pred = np.asarray(engine.infer(x))[0]
        truth = cv2.imread(str(label_path), cv2.IMREAD_UNCHANGED)
        src_wh = (image.shape[1], image.shape[0])
        model_cov.append(coverage_ratios(pred, zones.raster(pred.shape, src_wh), len(classes) + 1))
        label_cov.append(coverage_ratios(truth, zones.raster(truth.shape, src_wh), len(classes) + 1))
    engine.close()
    model_cov, label_cov = np.stack(model_cov), np.stack(label_cov)
    names = zones.names
    print(f"{len(model_cov)} frames, model {Path(args.model).name} at {info.input_size[0]}x{info.input_size[1]}, "
          f"labels 360x480\n")
    print("| zone | class | mean coverage (labels) | mean coverage (model) | MAE | max abs error |")
    print("|---|---|---:|---:|---:|---:|")
    for zone, cls_list in watched.items():
        z = names.index(zone)
        for cls in cls_list:
            c = classes.index(cls)
            err = np.abs(model_cov[:, z, c] - label_cov[:, z, c])
            print(f"| {zone} | {cls} | {label_cov[:, z, c].mean():.3f} | {model_cov[:, z, c].mean():.3f} | "
                  f"{err.mean():.3f} | {err.max():.3f} |")
    fps = 15.0

    def series(cov):
        return {r.name: cov[:, names.index(r.zone), classes.index(r.class_name)] for r in config.rules}
    from_model, from_labels = events(config.rules, series(model_cov), fps), events(config.rules, series(label_cov), fps)
    print("\n| rule | events (labels): start-end s | events (model): start-end s | start difference s |")
    print("|---|---|---|---:|")
    worst = 0.0
    for spec in config.rules:
        a, b = from_labels[spec.name], from_model[spec.name]
        diffs = [abs(x[0] - y[0]) for x, y in zip(a, b)]
        worst = max([worst, *diffs])
        fmt = lambda spans: ", ".join(f"{s:.2f}-{e:.2f}" for s, e in spans) or "none"  # noqa: E731
        print(f"| {spec.name} | {fmt(a)} | {fmt(b)} | "
              f"{', '.join(f'{d:.2f}' for d in diffs) or '-'}{' (counts differ)' if len(a) != len(b) else ''} |")
    print(f"\nlargest start difference: {worst:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
