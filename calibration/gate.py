"""Accuracy gate: evaluate fp32 and int8 on a val split with training's own evaluator
(training/evaluate.py: the app's preprocess, the engine interface, mmseg's IoU metric),
print per-class IoU deltas, and fail when the mIoU drop exceeds the allowed maximum."""
from __future__ import annotations

import sys

from core.errors import InputError


def evaluate_onnx(path, dataset: str, split: str = "val", limit: int | None = None,
                  threads: int | None = None, data_root: str | None = None, backend: str = "onnxruntime") -> dict:
    from engines.load import load_engine
    from training.datasets import SegDataset, load_dataset_config
    from training.evaluate import Predictor, evaluate_dataset

    ds_cfg = load_dataset_config(dataset, data_root)
    data = SegDataset(ds_cfg, split)
    if limit:
        data.pairs = data.pairs[:limit]
    engine = load_engine(str(path), backend=backend, threads=threads)
    if engine.info.num_classes != ds_cfg.num_classes:
        raise InputError(f"{path} predicts {engine.info.num_classes} classes but dataset {ds_cfg.name} has "
                         f"{ds_cfg.num_classes}; pass the dataset the model was trained on")
    print(f"evaluating {engine.describe()} on {ds_cfg.name} {split} ({len(data)} images)", file=sys.stderr)
    result = evaluate_dataset(Predictor(engine, ds_cfg.test_scale), data, ds_cfg.num_classes,
                              engine.info.class_names, progress=True)
    result["dataset"], result["split"], result["backend"] = ds_cfg.name, split, engine.backend
    engine.close()
    return result


def compare(fp32: dict, int8: dict, max_drop: float) -> dict:
    drop = fp32["mIoU"] - int8["mIoU"]
    per_class = {}
    for name, a in fp32["per_class_iou"].items():
        b = int8["per_class_iou"].get(name)
        per_class[name] = {"fp32": a, "int8": b, "delta": None if a is None or b is None else b - a}
    return {"dataset": fp32.get("dataset"), "split": fp32.get("split"), "num_images": fp32.get("num_images"),
            "fp32_mIoU": fp32["mIoU"], "int8_mIoU": int8["mIoU"], "mIoU_drop": drop,
            "max_drop": max_drop, "passed": drop <= max_drop, "backend": int8.get("backend", "onnxruntime"),
            "per_class_iou": per_class}


def format_gate(result: dict) -> str:
    def num(v):
        return "   n/a" if v is None else f"{v:6.2f}"

    def delta(v):
        return "    n/a" if v is None else f"{v:+7.2f}"

    lines = [f"accuracy gate: {result['dataset']} {result['split']} ({result['num_images']} images), "
             f"{result.get('backend', 'onnxruntime')} CPU", f"  {'class':>14}  {'fp32':>6}  {'int8':>6}  {'delta':>7}"]
    for name, r in result["per_class_iou"].items():
        lines.append(f"  {name:>14}  {num(r['fp32'])}  {num(r['int8'])}  {delta(r['delta'])}")
    verdict = "PASS" if result["passed"] else "FAIL"
    lines.append(f"  {'mIoU':>14}  {num(result['fp32_mIoU'])}  {num(result['int8_mIoU'])}  "
                 f"{delta(-result['mIoU_drop'])}   drop {result['mIoU_drop']:.2f} "
                 f"(max {result['max_drop']:.2f}): {verdict}")
    return "\n".join(lines)
