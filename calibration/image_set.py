"""Calibration image sets: N images drawn from a dataset split, a folder or a video.

The images are spread across sequences (CamVid `0016E5_...`, Cityscapes cities, sub-folders)
so a long sequence does not dominate the activation statistics, the draw is deterministic
for a seed, and every image goes through the app's own preprocess (core/preprocess.py), so
INT8 ranges are measured on exactly what the engine sees at run time. The list of images
used is saved beside the result (`save_list`) so a calibration can be repeated or audited.

Sources (`--data`):
  - a split list file (.txt): one image per line, optionally followed by its label path
    (`train/0001TP_006690.jpg trainannot/0001TP_006690.png`), paths relative to the file;
  - a dataset config (configs/datasets/<name>.yaml, by name or path): its train split;
  - a folder of images (searched recursively);
  - a video file: frames spread evenly over its length.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.preprocess import preprocess
from core.errors import InputError
from core.files import IMAGE_SUFFIXES, VIDEO_SUFFIXES

_FRAME_NUMBER = re.compile(r"^[a-z]?\d+$", re.IGNORECASE)   # `07965`, `f02100`


class CalibrationDataError(InputError):
    """A --data source that gives no usable images; one line that says what to pass."""


@dataclass(frozen=True)
class CalibrationItem:
    path: Path
    frame: int | None = None      # frame index for a video source

    def describe(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path}#frame={self.frame}"


def sequence_of(path: Path, root: Path | None = None) -> str:
    """The sequence an image belongs to: its sub-folder under `root` when there is one,
    else the file-name prefix before the running frame number."""
    if root is not None:
        try:
            rel = path.relative_to(root)
            if len(rel.parts) > 1:
                return str(rel.parent)
        except ValueError:
            pass
    # `0016E5_07965` -> `0016E5`, `0006R0_f02100` -> `0006R0`, `aachen_000012_000019_leftImg8bit`
    # -> `aachen`: the name parts before the first frame number.
    parts = re.split(r"[_-]", path.stem)
    for i, part in enumerate(parts):
        if i and _FRAME_NUMBER.match(part):
            return "_".join(parts[:i])
    return re.sub(r"\d+$", "", path.stem) or path.stem


def spread_across_sequences(paths: list, num: int, seed: int, root: Path | None = None) -> list:
    """Up to `num` paths, taken round-robin over sequences (each shuffled with `seed`), so
    every sequence contributes about equally. Deterministic for (paths, num, seed)."""
    groups: dict[str, list] = {}
    for p in sorted(set(paths)):
        groups.setdefault(sequence_of(p, root), []).append(p)
    rng = random.Random(seed)
    order = sorted(groups)
    rng.shuffle(order)
    for name in order:
        rng.shuffle(groups[name])
    picked = []
    while len(picked) < num and any(groups.values()):
        for name in order:
            if groups[name] and len(picked) < num:
                picked.append(groups[name].pop())
    return picked


def read_list_file(path: Path) -> list:
    """Image paths from a split list file (first column; paths relative to the file)."""
    images = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        image = (path.parent / line.split()[0]).resolve()
        if not image.is_file():
            raise CalibrationDataError(f"{path}:{n}: image {image} does not exist; fix the list file "
                                       "(paths are relative to it)")
        images.append(image)
    return images


def dataset_split_images(dataset: str, split: str = "train") -> list:
    """Image paths of a dataset config's split (configs/datasets/<name>.yaml or a YAML path),
    read through training's own dataset code so every layout (CamVid, Cityscapes, lists) works."""
    from training.datasets import dataset_pairs, load_dataset_config

    cfg = load_dataset_config(dataset)
    return [Path(img) for img, _ in dataset_pairs(cfg, split)]


def video_frame_indices(frame_count: int, num: int, seed: int) -> list:
    """`num` frame indices spread over the video: one random frame inside each of `num`
    equal slices (seeded), so the whole clip is covered."""
    num = min(num, frame_count)
    rng = random.Random(seed)
    edges = np.linspace(0, frame_count, num + 1)
    return sorted({min(frame_count - 1, int(rng.uniform(a, b))) for a, b in zip(edges[:-1], edges[1:])})


def _video_frame_count(path: Path) -> int:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))   # no count in the header: decode to count


def collect_items(data: str | Path, num: int, seed: int = 0, split: str = "train") -> list:
    """The calibration items for `--data` (dataset config, list file, folder or video)."""
    if num < 1:
        raise CalibrationDataError(f"--num-images {num}: use at least 1 (default 512)")
    data = Path(data)
    if data.suffix.lower() in (".yaml", ".yml") or (not data.exists() and not data.suffix and len(data.parts) == 1):
        paths = dataset_split_images(str(data), split)   # a dataset config name or YAML
        if not paths:
            raise CalibrationDataError(f"--data {data}: its {split} split names no images")
        return [CalibrationItem(p) for p in spread_across_sequences(paths, num, seed)]
    if not data.exists():
        raise CalibrationDataError(f"--data {data}: no such file or folder; pass a split list (train.txt), "
                                   "a dataset YAML, an image folder or a video")
    suffix = data.suffix.lower()
    if data.is_dir():
        paths = [p for p in data.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not paths:
            raise CalibrationDataError(f"--data {data}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it")
        return [CalibrationItem(p) for p in spread_across_sequences(paths, num, seed, root=data)]
    if suffix in VIDEO_SUFFIXES:
        count = _video_frame_count(data)
        if count == 0:
            raise CalibrationDataError(f"--data {data}: the video has no decodable frames")
        return [CalibrationItem(data, i) for i in video_frame_indices(count, num, seed)]
    if suffix in (".txt", ".lst", ".list"):
        paths = read_list_file(data)
    else:
        raise CalibrationDataError(f"--data {data}: not a list file (.txt), dataset YAML, folder or video "
                                   f"({', '.join(sorted(VIDEO_SUFFIXES))})")
    if not paths:
        raise CalibrationDataError(f"--data {data}: the list names no images")
    return [CalibrationItem(p) for p in spread_across_sequences(paths, num, seed)]


def load_bgr_images(items: list):
    """Yield (item, BGR uint8 image) in item order; video frames are decoded in one pass."""
    by_video: dict[Path, set] = {}
    for it in items:
        if it.frame is not None:
            by_video.setdefault(it.path, set()).add(it.frame)
    decoded: dict[tuple, np.ndarray] = {}
    for video, wanted in by_video.items():
        import av

        with av.open(str(video)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    decoded[(video, i)] = frame.to_ndarray(format="bgr24")
                if i >= max(wanted):
                    break
    for it in items:
        if it.frame is not None:
            img = decoded.get((it.path, it.frame))
            if img is None:
                raise CalibrationDataError(f"{it.describe()}: frame could not be decoded")
        else:
            img = cv2.imread(str(it.path), cv2.IMREAD_COLOR)
            if img is None:
                raise CalibrationDataError(f"{it.path}: not a readable image; remove it from the list")
        yield it, img



def preprocessing_record(size_hw, mean, std) -> dict:
    """What the preprocess does, as recorded in sidecars and TensorRT calibration cache keys
    (the build step rebuilds the same record from the ONNX sidecar to check a cache)."""
    # The function's name as first recorded (it moved to core/preprocess.py since, unchanged):
    # kept, so calibration caches keyed on it stay valid.
    return {"function": "app.preprocess.preprocess", "resize": "cv2.INTER_LINEAR",
            "color": "RGB", "layout": "NCHW", "dtype": "float32",
            "size_hw": [int(v) for v in size_hw], "mean": [float(v) for v in mean],
            "std": [float(v) for v in std]}

class CalibrationSet:
    """Items + the run-time preprocess for one model input: iterate to get [1, 3, H, W] arrays."""

    def __init__(self, items: list, size_hw: tuple, mean, std, source: str = ""):
        if not items:
            raise CalibrationDataError("the calibration set is empty; pass --data with images in it")
        self.items = list(items)
        self.size_hw = (int(size_hw[0]), int(size_hw[1]))
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.source = str(source)

    @classmethod
    def from_data(cls, data, num: int, seed: int, size_hw, mean, std, split: str = "train") -> "CalibrationSet":
        return cls(collect_items(data, num, seed, split), size_hw, mean, std, source=str(data))

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):
        for _, bgr in load_bgr_images(self.items):
            yield preprocess(bgr, self.size_hw, self.mean, self.std)

    def batches(self, batch_size: int):
        """[B, 3, H, W] float32 batches (the last one may be smaller)."""
        buf = []
        for x in self:
            buf.append(x[0])
            if len(buf) == batch_size:
                yield np.stack(buf)
                buf = []
        if buf:
            yield np.stack(buf)

    def preprocessing(self) -> dict:
        return preprocessing_record(self.size_hw, self.mean, self.std)

    def save_list(self, path: str | Path) -> Path:
        """One image (or video#frame) per line, in calibration order."""
        from core.files import atomic_write_bytes

        path = Path(path)
        lines = [f"# {len(self.items)} calibration images from {self.source}"]
        lines += [it.describe() for it in self.items]
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
        return path
