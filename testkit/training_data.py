"""Tiny real datasets on disk for the training tests: PNG images, label PNGs, a list file and
a dataset YAML (kind: list), plus a 3-class model config."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from core.model_config import MODELS_DIR

CLASSES = ["ground", "object", "sky"]
PALETTE = [[128, 64, 128], [220, 20, 60], [70, 130, 180]]


def make_pair(rng, h: int, w: int):
    """An image whose colors follow its label (so a model can learn it) and the label."""
    label = np.zeros((h, w), np.uint8)
    label[: h // 3] = 2
    y, x = rng.integers(h // 3, h - 8), rng.integers(0, w - 8)
    label[y:y + h // 4, x:x + w // 4] = 1
    label[-2:, :] = 255                        # an ignored strip
    colors = np.array([[40, 90, 40], [30, 30, 200], [200, 160, 90]], np.uint8)
    img = colors[np.minimum(label, 2)].astype(np.int16) + rng.integers(-20, 20, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8), label


def make_dataset(root: Path, n_train: int = 4, n_val: int = 2, h: int = 48, w: int = 64, seed: int = 0) -> Path:
    """Writes images/, labels/, train.txt, val.txt and dataset.yaml under root; returns the YAML."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("val", n_val)):
        lines = []
        for i in range(n):
            img, label = make_pair(rng, h, w)
            cv2.imwrite(str(root / "images" / f"{split}{i}.png"), img)
            cv2.imwrite(str(root / "labels" / f"{split}{i}.png"), label)
            lines.append(f"images/{split}{i}.png labels/{split}{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    cfg = {"name": "tiny", "kind": "list", "root": str(root), "train": "train.txt", "val": "val.txt",
           "num_classes": 3, "class_names": CLASSES, "palette": PALETTE, "scale": [w, h],
           "ratio_range": [0.75, 1.25], "test_scale": [w, h]}
    path = root / "dataset.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_model_config(path: Path) -> Path:
    """The CamVid R18 model config with 3 classes."""
    cfg = yaml.safe_load(open(MODELS_DIR / "bisenetv1_r18-d32_camvid-360x480.yaml"))
    cfg.update(name="bisenetv1_r18_tiny", num_classes=3, class_names=CLASSES, palette=PALETTE, crop_size=[48, 64])
    path.write_text(yaml.safe_dump(cfg))
    return path


def make_train_config(tmp: Path, image_hw=(48, 64), **overrides) -> Path:
    data_yaml = make_dataset(tmp / "data", h=image_hw[0], w=image_hw[1])
    model_yaml = make_model_config(tmp / "model.yaml")
    cfg = {"model": str(model_yaml), "dataset": str(data_yaml), "iterations": 6, "batch_size": 2, "lr": 0.01,
           "warmup_iters": 2, "crop_size": [32, 48], "eval_interval": 0, "checkpoint_interval": 3,
           "log_interval": 1, "workers": 0, "threads": 1, "seed": 0}
    cfg.update(overrides)
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
