"""Segmentation datasets: Cityscapes, COCO-Stuff 164k, CamVid and custom list files.

All of them come down to one thing: a list of (image path, label path) pairs plus a
256-entry lookup table that turns raw label values into train ids (0..C-1, 255 = ignore).
A dataset YAML (configs/datasets/*.yaml) says which layout to read and the train-time
scale; see docs/training.md for its keys.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.errors import InputError, MissingFileError
from core.validate import load_yaml
from core.config_files import config_names, config_path
from core.model_config import ConfigError, check_keys

IGNORE_INDEX = 255
KINDS = ("camvid", "cityscapes", "coco_stuff164k", "list")


@dataclass
class DatasetConfig:
    name: str
    kind: str                       # one of KINDS: which folder layout to read
    root: str                       # a relative root is relative to the working directory
    num_classes: int
    train: str = "train"            # split name (cityscapes, coco) or list file (camvid, list)
    val: str = "val"
    class_names: list = field(default_factory=list)   # required for kind 'list'
    palette: list = field(default_factory=list)
    label_map: dict = field(default_factory=dict)     # raw value -> train id (255 = ignore)
    scale: list = field(default_factory=lambda: [2048, 1024])   # RandomResize base (W, H)
    ratio_range: list = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    test_scale: list | None = None  # (W, H) keep-ratio resize for eval; None = image size
    source: str = ""

    def root_path(self) -> Path:
        # The user's working directory, like any path on a command line (--data-root too); not
        # the checkout, which an installed package does not have.
        return Path(self.root).expanduser().resolve()


def load_dataset_config(name_or_path: str | Path, root: str | None = None) -> DatasetConfig:
    """A name (configs/datasets/<name>.yaml) or a YAML path; `root` overrides the YAML's root."""
    path = config_path("datasets", name_or_path)
    if not path.is_file():
        known = ", ".join(config_names("datasets"))
        raise ConfigError(f"no dataset config {str(name_or_path)!r}: pass a YAML path or one of: {known}")
    data = load_yaml(path, "dataset config") or {}
    check_keys(DatasetConfig, data, str(path), exclude={"source"})
    try:
        cfg = DatasetConfig(**data, source=str(path))
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None
    if root:
        cfg.root = root
    if cfg.kind not in KINDS:
        raise ConfigError(f"{path}: kind {cfg.kind!r} is not one of {', '.join(KINDS)}")
    if cfg.class_names and len(cfg.class_names) != cfg.num_classes:
        raise ConfigError(f"{path}: num_classes is {cfg.num_classes} but there are {len(cfg.class_names)} class names")
    if cfg.palette and len(cfg.palette) != cfg.num_classes:
        raise ConfigError(f"{path}: num_classes is {cfg.num_classes} but there are {len(cfg.palette)} palette colors")
    if cfg.kind == "list" and not (cfg.class_names and cfg.palette):
        raise ConfigError(f"{path}: a custom (kind: list) dataset needs class_names and palette")
    return cfg


# ---------------------------------------------------------------- label lookup tables
def coco_stuff_lut() -> np.ndarray:
    """stuffthingmaps value -> 171 contiguous ids. The maps store COCO category id - 1;
    11 thing ids are unused in COCO, the rest (0..181 minus those) map in order; 255 stays 255."""
    unused = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    valid = [v for v in range(182) if v not in unused]
    lut[valid] = np.arange(len(valid), dtype=np.uint8)
    return lut


def label_lut(cfg: DatasetConfig) -> np.ndarray:
    if cfg.kind == "coco_stuff164k":
        return coco_stuff_lut()
    lut = np.arange(256, dtype=np.uint8)
    for raw, train_id in (cfg.label_map or {}).items():
        if not (0 <= int(raw) <= 255 and (0 <= int(train_id) < cfg.num_classes or int(train_id) == IGNORE_INDEX)):
            raise ConfigError(f"{cfg.source}: label_map {raw}: {train_id} must map 0..255 to 0..{cfg.num_classes - 1} or 255")
        lut[int(raw)] = int(train_id)
    return lut


# ---------------------------------------------------------------- file lists per layout
def _read_list_file(list_path: Path, base: Path) -> list[tuple[Path, Path]]:
    if not list_path.is_file():
        raise MissingFileError(f"list file {list_path} does not exist")
    pairs = []
    for n, line in enumerate(list_path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise InputError(f"{list_path}:{n}: expected 'image label' (two paths), got {line!r}")
        img, lab = (Path(p) if Path(p).is_absolute() else base / p for p in parts)
        pairs.append((img, lab))
    if not pairs:
        raise InputError(f"list file {list_path} names no image/label pairs")
    return pairs


def _cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    img_dir = root / "leftImg8bit" / split
    if not img_dir.is_dir():
        raise MissingFileError(f"{img_dir} does not exist: expected Cityscapes leftImg8bit/{split}/<city>/*.png")
    pairs = []
    for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        lab = root / "gtFine" / split / img.parent.name / f"{stem}_gtFine_labelTrainIds.png"
        if not lab.is_file():
            raise MissingFileError(f"{lab} does not exist: run `bisenet prepare cityscapes --root {root}` "
                                    "to make labelTrainIds from gtFine labelIds")
        pairs.append((img, lab))
    if not pairs:
        raise MissingFileError(f"no *_leftImg8bit.png images under {img_dir}")
    return pairs


def _coco_stuff_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    split = {"train": "train2017", "val": "val2017"}.get(split, split)
    img_dir = root / "images" / split
    if not img_dir.is_dir():
        raise MissingFileError(f"{img_dir} does not exist: expected COCO-Stuff images/{split}/*.jpg "
                                f"and annotations/{split}/*.png (stuffthingmaps)")
    pairs = [(img, root / "annotations" / split / f"{img.stem}.png") for img in sorted(img_dir.glob("*.jpg"))]
    if not pairs:
        raise MissingFileError(f"no .jpg images under {img_dir}")
    return pairs


def dataset_pairs(cfg: DatasetConfig, split: str) -> list[tuple[Path, Path]]:
    """(image, label) paths for 'train' or 'val'; every file is checked to exist."""
    root = cfg.root_path()
    if not root.is_dir():
        raise MissingFileError(f"dataset root {root} does not exist (from {cfg.source}; pass --data-root to change it)")
    entry = getattr(cfg, split)
    if cfg.kind == "cityscapes":
        pairs = _cityscapes_pairs(root, entry)
    elif cfg.kind == "coco_stuff164k":
        pairs = _coco_stuff_pairs(root, entry)
    else:   # camvid and custom: a list file of 'image label' lines relative to the root
        p = Path(entry)
        pairs = _read_list_file(p if p.is_absolute() else root / p, root)
    for img, lab in pairs:
        for f in (img, lab):
            if not f.is_file():
                raise MissingFileError(f"{f} does not exist (listed in the {split} split of {cfg.name})")
    return pairs


# ---------------------------------------------------------------- reading one sample
def read_pair(img_path: Path, lab_path: Path, lut: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 image and train-id uint8 label; errors name the file at fault."""
    img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{img_path}: cannot decode the image (corrupt or not an image)")
    raw = cv2.imread(str(lab_path), cv2.IMREAD_UNCHANGED)
    if raw is None:
        raise InputError(f"{lab_path}: cannot decode the label image")
    if raw.ndim == 3:
        raise InputError(f"{lab_path}: label has {raw.shape[2]} channels; expected a single-channel "
                         "image of class ids (not a color rendering)")
    if raw.dtype != np.uint8:
        if raw.max() > 255:
            raise InputError(f"{lab_path}: label value {int(raw.max())} does not fit 0..255")
        raw = raw.astype(np.uint8)
    if raw.shape[:2] != img.shape[:2]:
        raise InputError(f"{lab_path}: label is {raw.shape[1]}x{raw.shape[0]} but its image "
                         f"{img_path} is {img.shape[1]}x{img.shape[0]}; they must match")
    label = lut[raw]
    bad = (label >= num_classes) & (label != IGNORE_INDEX)
    if bad.any():
        v = int(raw[bad][0])
        raise InputError(f"{lab_path}: label value {v} is outside 0..{num_classes - 1} and not 255 (ignore); "
                         "fix the file or map it with label_map in the dataset YAML")
    return img, label


class SegDataset:
    """Map-style dataset. Indexed by (index, seed): the seed drives this sample's augmentation,
    so results do not depend on worker count or process and a resume replays them exactly."""

    def __init__(self, cfg: DatasetConfig, split: str, transform=None):
        self.cfg = cfg
        self.split = split
        self.pairs = dataset_pairs(cfg, split)
        self.lut = label_lut(cfg)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        img_path, lab_path = self.pairs[index]
        return read_pair(img_path, lab_path, self.lut, self.cfg.num_classes)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        img, label = self.read(index)
        if self.transform is None:
            return img, label
        return self.transform(img, label, np.random.default_rng(seed))
