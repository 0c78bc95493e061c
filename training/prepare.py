"""`bisenet prepare cityscapes`: gtFine `*_labelIds.png` -> `*_labelTrainIds.png` (19 classes, 255 ignore).

The same mapping as cityscapesscripts' labels.py (trainId column). Each output is written to
a temp file and renamed, so an interrupted run never leaves a half-written label; existing
outputs are skipped unless --force.
"""
from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from core.errors import InputError, MissingFileError
from core.files import atomic_path
from core.validate import Number

HELP = "prepare a dataset for training: Cityscapes gtFine labelIds -> labelTrainIds"
EXAMPLE = "bisenet prepare cityscapes --root data/cityscapes"

# Cityscapes label id -> train id (cityscapesscripts/helpers/labels.py); all others 255.
CITYSCAPES_ID_TO_TRAIN_ID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                             24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


def cityscapes_lut() -> np.ndarray:
    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    return lut


def convert_one(src: Path, lut: np.ndarray, force: bool = False) -> bool:
    """Write <name>_labelTrainIds.png beside <name>_labelIds.png; False when it already existed."""
    dst = src.with_name(src.name.replace("_labelIds.png", "_labelTrainIds.png"))
    if dst.exists() and not force:
        return False
    raw = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.ndim != 2:
        raise InputError(f"{src}: not a single-channel label image; expected gtFine *_labelIds.png")
    with atomic_path(dst, suffix=".tmp.png") as tmp:   # cv2 picks the format by the suffix
        if not cv2.imwrite(str(tmp), lut[raw]):
            raise InputError(f"cannot write {tmp}")
    return True


def prepare_cityscapes(root: str | Path, workers: int = 4, force: bool = False, progress: bool = True) -> int:
    root = Path(root)
    gt = root / "gtFine"
    if not gt.is_dir():
        raise MissingFileError(f"{gt} does not exist: pass --root, the folder holding leftImg8bit/ and gtFine/")
    sources = sorted(gt.glob("*/*/*_gtFine_labelIds.png"))
    if not sources:
        raise MissingFileError(f"no gtFine/<split>/<city>/*_gtFine_labelIds.png under {root}")
    lut = cityscapes_lut()
    written = 0
    with ThreadPoolExecutor(max(1, workers)) as pool:   # OpenCV releases the GIL
        results = pool.map(lambda p: convert_one(p, lut, force), sources)
        if progress:
            from tqdm import tqdm
            results = tqdm(results, total=len(sources), desc="labelTrainIds", unit="file", file=sys.stderr)
        for made in results:
            written += int(made)
    print(f"{written} labelTrainIds written, {len(sources) - written} already there, under {gt}")
    return written


# The ranges of the numeric flags below (app/cli.py checks them before run()).
FLAG_RULES = {"workers": Number(int, 1, 256)}


def add_arguments(p) -> None:
    p.add_argument("dataset", choices=("cityscapes",), help="which dataset to prepare")
    p.add_argument("--root", required=True, help="dataset root (holding leftImg8bit/ and gtFine/)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--force", action="store_true", help="rewrite outputs that already exist")


def run(args) -> int:
    prepare_cityscapes(args.root, args.workers, args.force)
    return 0
