"""`bisenet eval`: mIoU, aAcc and per-class IoU (mmseg IoUMetric) of a checkpoint or any engine.

The prediction path is the app's: preprocess() to the engine's input size, the engine's
logits resized bilinearly to the label size, argmax. Multi-scale + flip averages softmax
over scales (ratios of the test scale) and horizontal flips, as mmseg's SegTTAModel.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

from core.errors import InputError
from core.preprocess import preprocess

HELP = "evaluate a checkpoint or an exported model (ONNX/TensorRT) on a dataset's val split: mIoU, aAcc, per-class IoU"
EXAMPLE = ("bisenet eval --model bisenetv1_r18-d32_camvid-360x480 --checkpoint /work/runs/camvid_r18/best.pth "
           "--dataset camvid --json eval.json")
IGNORE_INDEX = 255
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


# ---------------------------------------------------------------- metric
def confusion_matrix(pred: np.ndarray, label: np.ndarray, num_classes: int) -> np.ndarray:
    """[num_classes, num_classes] int64 counts, rows = ground truth, columns = prediction;
    pixels labelled 255 (ignore) are left out."""
    valid = label != IGNORE_INDEX
    idx = label[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(cm: np.ndarray, class_names=None) -> dict:
    """mmseg IoUMetric: IoU = intersect / (pred + label - intersect) per class, mIoU = the
    mean over classes whose union is non-empty, aAcc = all correct / all labelled pixels.
    Percentages."""
    cm = cm.astype(np.float64)
    intersect = np.diag(cm)
    area_label = cm.sum(axis=1)
    area_pred = cm.sum(axis=0)
    union = area_pred + area_label - intersect
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = intersect / union
        acc = intersect / area_label
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]

    def pct(v):
        return None if math.isnan(v) else float(v) * 100.0

    return {
        "mIoU": pct(np.nanmean(iou)) if not np.all(np.isnan(iou)) else None,
        "aAcc": pct(intersect.sum() / area_label.sum()) if area_label.sum() else None,
        "mAcc": pct(np.nanmean(acc)) if not np.all(np.isnan(acc)) else None,
        "per_class_iou": {n: pct(v) for n, v in zip(names, iou)},
        "per_class_acc": {n: pct(v) for n, v in zip(names, acc)},
    }


# ---------------------------------------------------------------- prediction
def rescale_hw(h: int, w: int, scale_wh) -> tuple[int, int]:
    """mmcv keep-ratio rescale of (h, w) to fit scale (W, H)."""
    factor = min(max(scale_wh) / max(h, w), min(scale_wh) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_scores(scores: np.ndarray, out_hw) -> np.ndarray:
    """[C, h, w] float -> [C, H, W], bilinear with half-pixel centers (align_corners=False)."""
    if scores.shape[1:] == tuple(out_hw):
        return scores
    hwc = np.ascontiguousarray(scores.transpose(1, 2, 0))
    chunks = [cv2.resize(hwc[:, :, i:i + 256], (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
              for i in range(0, hwc.shape[2], 256)]   # OpenCV takes at most 512 channels
    out = np.concatenate([c.reshape(out_hw[0], out_hw[1], -1) for c in chunks], axis=2)
    return out.transpose(2, 0, 1)


def softmax(x: np.ndarray, axis=0) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


class Predictor:
    """Labels for one BGR image from an engine (anything with info, input_dtype, infer,
    infer_logits: engines/base.py)."""

    def __init__(self, engine, test_scale=None, ratios=(1.0,), flip=False, input_size=None):
        """test_scale: (W, H) keep-ratio resize for engines that take any size (mmseg's test
        Resize); input_size: (H, W) to feed instead. Static engines always get their own size."""
        self.engine = engine
        self.info = engine.info
        self.test_scale = test_scale
        self.ratios = tuple(ratios)
        self.flip = flip
        self.size = tuple(input_size) if input_size else None
        if not getattr(self.info, "dynamic", False):
            if self.size and self.size != tuple(self.info.input_size):
                raise InputError(f"--input-size {self.size[0]}x{self.size[1]}: {engine.describe()} only takes "
                                 f"{self.info.input_size[0]}x{self.info.input_size[1]}")
            self.size = tuple(self.info.input_size)
        self.fixed = self.size is not None
        if (len(self.ratios) > 1 or self.flip) and self.fixed:
            raise InputError(f"multi-scale/flip evaluation needs an engine that takes any input size; "
                             f"{engine.describe()} has a fixed input: use a PyTorch checkpoint or a dynamic ONNX export")
        if (len(self.ratios) > 1 or self.flip) and self.info.head != "logits":
            raise InputError("multi-scale/flip evaluation needs logits: export with --head logits")

    def describe_engine(self) -> str:
        """engine.describe() with the size images are evaluated at: a dynamic export's own
        input size (its sidecar's) is not what it is fed here."""
        h, w = self.info.input_size
        return self.engine.describe().replace(f"input {h}x{w}", f"input {self.describe_input()}", 1)

    def describe_input(self) -> str:
        """The size images are evaluated at (HxW), or how it is chosen."""
        if self.fixed:
            return f"{self.size[0]}x{self.size[1]}"
        if self.test_scale:
            return f"rescaled to fit {self.test_scale[0]}x{self.test_scale[1]} (the dataset's test scale, WxH)"
        return "each image's own size"

    def input_size(self, h: int, w: int, ratio: float = 1.0) -> tuple[int, int]:
        if self.fixed:
            return self.size
        if self.test_scale:
            sw, sh = self.test_scale
            return rescale_hw(h, w, (sw * ratio, sh * ratio))
        return int(h * ratio + 0.5), int(w * ratio + 0.5)

    def _run(self, bgr, size_hw):
        x = preprocess(bgr, size_hw, self.info.mean, self.info.std, dtype=self.engine.input_dtype)
        if self.info.head == "logits":
            return np.asarray(self.engine.infer_logits(x))[0].astype(np.float32)
        return np.asarray(self.engine.infer(x))[0]

    def __call__(self, bgr: np.ndarray) -> np.ndarray:
        h, w = bgr.shape[:2]
        if self.info.head != "logits":   # a labels-only engine: nearest resize of its labels
            labels = self._run(bgr, self.input_size(h, w)).astype(np.uint8)
            return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
        if len(self.ratios) == 1 and not self.flip:
            return resize_scores(self._run(bgr, self.input_size(h, w, self.ratios[0])), (h, w)).argmax(0)
        total = None
        for ratio in self.ratios:
            size = self.input_size(h, w, ratio)
            for flipped in ((False, True) if self.flip else (False,)):
                img = np.ascontiguousarray(bgr[:, ::-1]) if flipped else bgr
                logits = self._run(img, size)
                if flipped:
                    logits = logits[:, :, ::-1]
                probs = softmax(resize_scores(np.ascontiguousarray(logits), (h, w)))
                total = probs if total is None else total + probs
        return total.argmax(0)


def evaluate_dataset(predictor: Predictor, dataset, num_classes: int, class_names=None, progress=False) -> dict:
    """Confusion-matrix metrics over every (image, label) of a SegDataset without transform."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    indices = range(len(dataset))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc="eval", unit="img", file=sys.stderr, dynamic_ncols=True)
    for i in indices:
        img, label = dataset.read(i)
        cm += confusion_matrix(predictor(img), label, num_classes)
    out = metrics_from_confusion(cm, class_names)
    out["num_images"] = len(dataset)
    return out


class ModuleEngine:
    """A BiSeNetV1 nn.Module in training, behind the engine interface (any input size)."""

    backend = "pytorch"

    def __init__(self, model, info, device="cpu"):
        self.model, self.device = model, device
        self.info = info
        self.info.dynamic = True
        self.info.head = "logits"
        self.input_dtype = np.float32

    def infer_logits(self, batch: np.ndarray) -> np.ndarray:
        import torch
        with torch.no_grad():
            return self.model(torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        return self.infer_logits(batch).argmax(1).astype(np.int32)

    def describe(self) -> str:
        return f"pytorch {self.info.model} (in training)"


# ---------------------------------------------------------------- CLI
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
    print(f"evaluating {engine.describe()} on {ds_cfg.name} {args.split} ({len(dataset)} images, {args.aug})",
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
