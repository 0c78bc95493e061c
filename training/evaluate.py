"""`bisenet eval`: mIoU, aAcc and per-class IoU (mmseg IoUMetric) of a checkpoint or any engine.

The prediction path is the app's: preprocess() to the engine's input size, the engine's
logits resized bilinearly to the label size, argmax. Multi-scale + flip averages softmax
over scales (ratios of the test scale) and horizontal flips, as mmseg's SegTTAModel.
"""
from __future__ import annotations

import math
import sys

import cv2
import numpy as np

from core.errors import InputError
from core.preprocess import preprocess

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

