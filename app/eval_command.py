"""`bisenet eval`: mIoU of a checkpoint or an exported model (ONNX, TensorRT, Triton) on a
dataset's split. The command sits above engines/ and training/: it loads any engine
(engines.load) and feeds it training's dataset and evaluator (training/evaluate.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from typing import Annotated

from core import options
from core.errors import InputError
from core.options import OneOf, Rule, Section, Text, option
from core.validate import Number
from engines.load import EngineOptions
from training.evaluate import MS_RATIOS, Predictor, evaluate_dataset

HELP = "evaluate a checkpoint or an exported model (ONNX/TensorRT) on a dataset's val split: mIoU, aAcc, per-class IoU"
EXAMPLE = ("bisenet eval --model bisenetv1_r18-d32_camvid-360x480 --checkpoint ../shared/models/camvid_r18-d32_cpu.pth "
           "--dataset camvid --json eval.json")


class EvalFlags(Section):
    """`bisenet eval`'s own options; the engine's (--checkpoint, --providers, --backend,
    --precision, --threads) are the engines' declarations (engines/load.py)."""
    model: Text = option(None, "what to evaluate: a model config name/YAML (with --checkpoint), an .onnx/.engine "
                         "file, or a Triton model grpc://HOST:8001/NAME", required=True)
    dataset: Text = option(None, "dataset config name (configs/datasets) or YAML path", required=True)
    data_root: Text = option(None, "override the dataset YAML's root folder")
    split: Annotated[str, Rule(OneOf(("train", "val")))] = option("val", "the dataset's split (default val)")
    aug: Annotated[str, Rule(OneOf(("whole", "ms-flip")))] = option(
        "whole", "single-scale whole image, or multi-scale (ratios 0.5-1.75) + flip")
    input_size: Text = option(None, "feed every image at this size (default: a static engine's own size; for "
                              "PyTorch and dynamic ONNX, the dataset's test scale as mmseg)", metavar="HxW")
    limit: Annotated[int | None, Rule(Number(int, min=1))] = option(None, "only the first N images (quick checks)")
    json_file: Text = option(None, "write the metrics to this JSON file", flag="--json", metavar="FILE")


ENGINE_FLAGS = ("checkpoint", "providers", "backend", "precision", "threads")
OPTIONS = (EvalFlags, EngineOptions)   # checked by app/cli.py before run()


def add_arguments(p) -> None:
    options.add_arguments(p, (EvalFlags,), suppress=False)
    options.add_arguments(p, (EngineOptions,), suppress=False, only=ENGINE_FLAGS)


def run(args) -> int:
    from engines.load import load_engine
    from training.datasets import SegDataset, load_dataset_config

    ds_cfg = load_dataset_config(args.dataset, args.data_root)
    dataset = SegDataset(ds_cfg, args.split)
    if args.limit:
        dataset.pairs = dataset.pairs[: args.limit]
    input_size = None
    if args.input_size:
        try:
            input_size = tuple(int(v) for v in args.input_size.lower().split("x"))
            assert len(input_size) == 2 and min(input_size) > 0
        except (ValueError, AssertionError):
            raise InputError(f"--input-size {args.input_size!r}: write it as HxW, e.g. 352x480") from None
    engine = load_engine(args.model, {name: getattr(args, name) for name in ENGINE_FLAGS})
    if engine.backend == "pytorch":
        engine.info.dynamic = True      # a PyTorch model takes any input size
    if engine.info.num_classes != ds_cfg.num_classes:
        raise InputError(f"{engine.info.model} predicts {engine.info.num_classes} classes but dataset "
                         f"{ds_cfg.name} has {ds_cfg.num_classes}")
    ratios, flip = (MS_RATIOS, True) if args.aug == "ms-flip" else ((1.0,), False)
    predictor = Predictor(engine, ds_cfg.test_scale, ratios, flip, input_size)
    print(f"evaluating {predictor.describe_engine()} on {ds_cfg.name} {args.split} ({len(dataset)} images, {args.aug})",
          file=sys.stderr)
    result = evaluate_dataset(predictor, dataset, ds_cfg.num_classes, engine.info.class_names, progress=True)
    result.update(model=args.model, checkpoint=args.checkpoint, dataset=ds_cfg.name, split=args.split,
                  aug=args.aug, engine=engine.describe(),
                  input_size=list(predictor.size) if predictor.size else f"test scale {ds_cfg.test_scale}")
    for name, iou in result["per_class_iou"].items():
        print(f"  {name:>20s}  IoU {'  n/a' if iou is None else f'{iou:6.2f}'}")
    print(f"mIoU {result['mIoU']:.2f}  aAcc {result['aAcc']:.2f}  mAcc {result['mAcc']:.2f}")
    if args.json_file:
        Path(args.json_file).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json_file}", file=sys.stderr)
    engine.close()
    return 0
