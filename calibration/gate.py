"""Accuracy gate: evaluate fp32 and every run-time precision of the int8 model this CPU can
run (ONNX Runtime int8; OpenVINO int8+fp32, and int8+bf16 where the CPU has bf16) on a val
split with training's own evaluator (training/evaluate.py: the app's preprocess, the engine
interface, mmseg's IoU metric). A precision passes when its mIoU drop is at most `max_drop`
AND no class with a meaningful share of the val pixels (>= `min_class_share` %) drops more
than `max_class_drop` IoU points: a mean can look fine while one class's masks fall apart."""
from __future__ import annotations

import sys

import numpy as np

from core.errors import InputError

# (name, backend, compute precision): the int8 model as the app can run it. The names are
# what the engines report (engine.info.precision) and what the sidecar records.
VARIANTS = [("int8", "onnxruntime", None), ("int8+fp32", "openvino", "fp32"), ("int8+bf16", "openvino", "bf16")]


class LabelCounter:
    """The val split as evaluate_dataset reads it, counting label pixels per class on the way
    (the per-class gate needs each class's pixel share; no second pass over the files)."""

    def __init__(self, data, num_classes: int):
        self.data, self.counts = data, np.zeros(num_classes, np.int64)

    def __len__(self):
        return len(self.data)

    def read(self, i):
        img, label = self.data.read(i)
        valid = label[label < len(self.counts)]
        self.counts += np.bincount(valid.ravel(), minlength=len(self.counts))[: len(self.counts)]
        return img, label


def evaluate_onnx(path, dataset: str, split: str = "val", limit: int | None = None,
                  threads: int | None = None, data_root: str | None = None, backend: str = "onnxruntime",
                  precision: str | None = None) -> dict:
    from engines.load import load_engine
    from training.datasets import SegDataset, load_dataset_config
    from training.evaluate import Predictor, evaluate_dataset

    ds_cfg = load_dataset_config(dataset, data_root)
    data = SegDataset(ds_cfg, split)
    if limit:
        data.pairs = data.pairs[:limit]
    engine = load_engine(str(path), backend=backend, threads=threads, precision=precision)
    if engine.info.num_classes != ds_cfg.num_classes:
        raise InputError(f"{path} predicts {engine.info.num_classes} classes but dataset {ds_cfg.name} has "
                         f"{ds_cfg.num_classes}; pass the dataset the model was trained on")
    print(f"evaluating {engine.describe()} on {ds_cfg.name} {split} ({len(data)} images)", file=sys.stderr)
    counted = LabelCounter(data, ds_cfg.num_classes)
    result = evaluate_dataset(Predictor(engine, ds_cfg.test_scale), counted, ds_cfg.num_classes,
                              engine.info.class_names, progress=True)
    total = max(int(counted.counts.sum()), 1)
    result["pixel_share"] = {n: 100.0 * int(c) / total for n, c in zip(engine.info.class_names, counted.counts)}
    result["dataset"], result["split"], result["backend"] = ds_cfg.name, split, engine.backend
    result["precision"] = engine.info.precision
    engine.close()
    return result


def runnable_variants(cpu, backends=("onnxruntime", "openvino")) -> tuple[list, dict]:
    """([(name, backend, compute)], {name: why skipped}) for this CPU and the installed backends."""
    run, skipped = [], {}
    for name, backend, compute in VARIANTS:
        if backend not in backends:
            continue
        if backend == "openvino":
            try:
                import openvino  # noqa: F401
            except ImportError:
                skipped[name] = "openvino is not installed (pip install openvino)"
                continue
        if compute == "bf16" and not cpu.bf16:
            skipped[name] = f"this CPU has no bf16 (AVX512-BF16 or AMX): {cpu.summary()}"
            continue
        run.append((name, backend, compute))
    return run, skipped


def compare(fp32: dict, int8: dict, max_drop: float, max_class_drop: float = 5.0,
            min_class_share: float = 0.5) -> dict:
    """One int8 variant against fp32: the mean gate and the per-class gate."""
    drop = fp32["mIoU"] - int8["mIoU"]
    share = fp32.get("pixel_share", {})
    per_class, failing = {}, []
    for name, a in fp32["per_class_iou"].items():
        b = int8["per_class_iou"].get(name)
        delta = None if a is None or b is None else b - a
        gated = share.get(name, 100.0) >= min_class_share
        per_class[name] = {"fp32": a, "int8": b, "delta": delta, "pixel_share": share.get(name), "gated": gated}
        if gated and delta is not None and -delta > max_class_drop:
            failing.append(name)
    gated = [r for r in per_class.values() if r["gated"] and r["delta"] is not None]
    worst = min(gated, key=lambda r: r["delta"], default=None)
    worst_name = next((n for n, r in per_class.items() if r is worst), None)
    mean_ok = drop <= max_drop
    return {"dataset": fp32.get("dataset"), "split": fp32.get("split"), "num_images": fp32.get("num_images"),
            "backend": int8.get("backend", "onnxruntime"), "precision": int8.get("precision", "int8"),
            "fp32_mIoU": fp32["mIoU"], "int8_mIoU": int8["mIoU"], "mIoU_drop": drop, "max_drop": max_drop,
            "max_class_drop": max_class_drop, "min_class_share": min_class_share,
            "worst_class": worst_name, "worst_class_drop": None if worst is None else -worst["delta"],
            "classes_failing": failing, "mean_passed": mean_ok, "passed": mean_ok and not failing,
            "per_class_iou": per_class}


def summary(result: dict) -> dict:
    """What the sidecar keeps of one variant's comparison (no per-class table)."""
    return {k: v for k, v in result.items() if k != "per_class_iou"}


def verdict(result: dict) -> str:
    if result["passed"]:
        return "PASS"
    why = []
    if not result["mean_passed"]:
        why.append(f"mIoU drop {result['mIoU_drop']:.2f} > {result['max_drop']:.2f}")
    if result["classes_failing"]:
        why.append(f"{', '.join(result['classes_failing'])} drop > {result['max_class_drop']:.2f}")
    return "FAIL (" + "; ".join(why) + ")"


def format_gate(results: list) -> str:
    """The table: one row per class (pixel share, fp32 IoU, each variant's delta), the mIoU
    row, then one verdict line per variant. Classes below the share limit are marked '-'."""
    def num(v, w=6):
        return " " * (w - 3) + "n/a" if v is None else f"{v:{w}.2f}"

    def delta(v):
        return "    n/a" if v is None else f"{v:+7.2f}"

    first = results[0]
    short = {"onnxruntime": "ort", "openvino": "ov"}
    names = [f"{short.get(r['backend'], r['backend'])} {r['precision']}" for r in results]
    backends = "/".join(dict.fromkeys(r["backend"] for r in results))
    lines = [f"accuracy gate: {first['dataset']} {first['split']} ({first['num_images']} images), {backends} CPU; "
             f"per class: drop <= {first['max_class_drop']:.2f} for classes with >= {first['min_class_share']:.2f}% "
             "of the pixels",
             f"  {'class':>14}  {'share%':>6}  {'fp32':>6}  " + "  ".join(f"{n:>15}" for n in names)]
    for cls, row in first["per_class_iou"].items():
        cells = "  ".join(f"{delta(r['per_class_iou'][cls]['delta']):>15}" for r in results)
        mark = " " if row["gated"] else "-"
        lines.append(f"{mark} {cls:>14}  {num(row['pixel_share'])}  {num(row['fp32'])}  {cells}")
    cells = "  ".join(f"{num(r['int8_mIoU']):>8} {delta(-r['mIoU_drop'])}" for r in results)
    lines.append(f"  {'mIoU':>14}  {'':>6}  {num(first['fp32_mIoU'])}  {cells}")
    for name, r in zip(names, results):
        lines.append(f"  {name}: drop {r['mIoU_drop']:.2f} (max {r['max_drop']:.2f}), worst class "
                     f"{r['worst_class']} {-(r['worst_class_drop'] or 0):+.2f}: {verdict(r)}")
    return "\n".join(lines)
