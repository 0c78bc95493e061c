"""mmseg's BiSeNetV1 train pipeline in OpenCV/NumPy.

RandomResize(scale, ratio 0.5-2.0, keep ratio) -> RandomCrop(cat_max_ratio 0.75)
-> RandomFlip(0.5) -> PhotoMetricDistortion -> normalize -> pad to the crop
(image 0 after normalization as mmseg's data preprocessor does, label 255).
Each call takes its own np.random.Generator so a sample's augmentation is reproducible.
"""
from __future__ import annotations

import cv2
import numpy as np

from core.preprocess import preprocess

IGNORE_INDEX = 255


def rescale_size(w: int, h: int, scale_wh) -> tuple[int, int]:
    """mmcv keep-ratio rescale: the largest size with long edge <= max(scale), short <= min(scale)."""
    factor = min(max(scale_wh) / max(h, w), min(scale_wh) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def random_resize(img, label, rng, scale_wh, ratio_range):
    ratio = rng.uniform(ratio_range[0], ratio_range[1])
    target = (int(scale_wh[0] * ratio), int(scale_wh[1] * ratio))   # as mmseg RandomResize
    w, h = rescale_size(img.shape[1], img.shape[0], target)
    img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    return img, label


def random_crop(img, label, rng, crop_hw, cat_max_ratio=0.75):
    """A crop where no single class covers more than cat_max_ratio of the labelled pixels
    (up to 10 tries, then the last one), as mmseg's RandomCrop."""
    ch, cw = crop_hw
    h, w = label.shape

    def bbox():
        y = int(rng.integers(0, max(h - ch, 0) + 1))
        x = int(rng.integers(0, max(w - cw, 0) + 1))
        return y, min(y + ch, h), x, min(x + cw, w)

    y0, y1, x0, x1 = bbox()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            values, counts = np.unique(label[y0:y1, x0:x1], return_counts=True)
            counts = counts[values != IGNORE_INDEX]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, y1, x0, x1 = bbox()
    return img[y0:y1, x0:x1], label[y0:y1, x0:x1]


def random_flip(img, label, rng, prob=0.5):
    if rng.random() < prob:
        return img[:, ::-1], label[:, ::-1]
    return img, label


def photometric_distortion(img, rng, brightness=32, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18):
    """mmseg PhotoMetricDistortion: each step applied with probability 0.5, contrast either
    before or after the HSV steps."""
    def convert(x, alpha=1.0, beta=0.0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    if rng.integers(2):
        img = convert(img, beta=rng.uniform(-brightness, brightness))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img = convert(img, alpha=rng.uniform(*contrast))
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=rng.uniform(*saturation))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        # OpenCV's 8-bit hue is 0..179 (degrees / 2), as mmcv's.
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + int(rng.integers(-hue, hue))) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not contrast_first and rng.integers(2):
        img = convert(img, alpha=rng.uniform(*contrast))
    return img


def normalize(img, mean, std) -> np.ndarray:
    """BGR uint8 HWC -> normalized RGB float32 CHW, through the app's one preprocess."""
    return preprocess(np.ascontiguousarray(img), img.shape[:2], mean, std)[0]


def pad_to(chw: np.ndarray, label: np.ndarray, crop_hw):
    ch, cw = crop_hw
    _, h, w = chw.shape
    if h >= ch and w >= cw:
        return chw, label
    img = np.zeros((3, max(h, ch), max(w, cw)), dtype=chw.dtype)
    img[:, :h, :w] = chw
    lab = np.full(img.shape[1:], IGNORE_INDEX, dtype=label.dtype)
    lab[:h, :w] = label
    return img, lab


class TrainTransform:
    """The whole train pipeline; returns (float32 [3, H, W] image, int64 [H, W] label)."""

    def __init__(self, crop_hw, scale_wh, ratio_range, mean, std, cat_max_ratio=0.75, photometric=True):
        self.crop_hw = tuple(int(v) for v in crop_hw)
        self.scale_wh = tuple(scale_wh)
        self.ratio_range = tuple(ratio_range)
        self.mean, self.std = mean, std
        self.cat_max_ratio = cat_max_ratio
        self.photometric = photometric

    def __call__(self, img, label, rng):
        img, label = random_resize(img, label, rng, self.scale_wh, self.ratio_range)
        img, label = random_crop(img, label, rng, self.crop_hw, self.cat_max_ratio)
        img, label = random_flip(img, label, rng)
        if self.photometric:
            img = photometric_distortion(np.ascontiguousarray(img), rng)
        chw, label = pad_to(normalize(img, self.mean, self.std), np.ascontiguousarray(label), self.crop_hw)
        return chw, label.astype(np.int64)
