"""`bisenet eval`: mIoU of a checkpoint or an exported model (ONNX, TensorRT, Triton) on a
dataset's split. The command sits above engines/ and training/: it loads any engine
(engines.load) and feeds it training's dataset and evaluator (training/evaluate.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from core.errors import InputError
from training.evaluate import MS_RATIOS, Predictor, evaluate_dataset

HELP = "evaluate a checkpoint or an exported model (ONNX/TensorRT) on a dataset's val split: mIoU, aAcc, per-class IoU"
EXAMPLE = ("bisenet eval --model bisenetv1_r18-d32_camvid-360x480 --checkpoint ../shared/models/camvid_r18-d32_cpu.pth "
           "--dataset camvid --json eval.json")


def add_arguments(p) -> None:
    p.add_argument("--model", required=True,
                   help="what to evaluate: a model config name/YAML (with --checkpoint), an .onnx/.engine file, "
                        "or a Triton model grpc://HOST:8001/NAME")
    p.add_argument("--checkpoint", help="PyTorch checkpoint (.pth) for a model config")
    p.add_argument("--dataset", required=True, help="dataset config name (configs/datasets) or YAML path")
    p.add_argument("--data-root", help="override the dataset YAML's root folder")
    p.add_argument("--split", default="val", choices=("train", "val"))
    p.add_argument("--aug", choices=("whole", "ms-flip"), default="whole",
                   help="single-scale whole image, or multi-scale (ratios 0.5-1.75) + flip")
    p.add_argument("--input-size", metavar="HxW",
                   help="feed every image at this size (default: a static engine's own size; for PyTorch "
                        "and dynamic ONNX, the dataset's test scale as mmseg)")
    p.add_argument("--providers", help="ONNX Runtime providers, comma-separated (cpu, cuda, tensorrt)")
    p.add_argument("--backend", choices=("openvino", "onnxruntime"),
                   help="CPU backend for an .onnx model (default: openvino for int8 and bf16, onnxruntime for fp32)")
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="float compute precision, OpenVINO only (default fp32)")
    p.add_argument("--threads", type=int, help="inference threads of the CPU backend (default: its own choice)")
    p.add_argument("--limit", type=int, help="only the first N images (quick checks)")
    p.add_argument("--json", help="write the metrics to this JSON file")


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
    engine = load_engine(args.model, checkpoint=args.checkpoint, providers=args.providers,
                         backend=args.backend, precision=args.precision, threads=args.threads)
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
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    engine.close()
    return 0
