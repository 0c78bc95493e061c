"""The one CPU preprocess (the reference the CUDA kernel is held to).

uint8 BGR HWC at source size -> bilinear resize (OpenCV INTER_LINEAR, half-pixel centers)
-> RGB -> (x - mean) / std -> CHW -> [1, 3, H, W] float32 or float16.
Used by the app, evaluation and INT8 calibration alike.
"""
from __future__ import annotations

import cv2
import numpy as np


def preprocess(bgr: np.ndarray, size_hw: tuple, mean, std, dtype=np.float32) -> np.ndarray:
    if bgr.ndim != 3 or bgr.shape[2] != 3 or bgr.dtype != np.uint8:
        raise ValueError(f"preprocess takes a uint8 BGR HxWx3 image, got {bgr.dtype} {bgr.shape}")
    h, w = int(size_hw[0]), int(size_hw[1])
    img = bgr if bgr.shape[:2] == (h, w) else cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
    mean = np.asarray(mean, dtype=np.float32)
    inv_std = 1.0 / np.asarray(std, dtype=np.float32)
    # Channel by channel straight into the CHW output: two passes over the image instead of
    # five (convert, subtract, scale, transpose, copy); the same float32 ops, the same bits.
    out = np.empty((1, 3, h, w), dtype=np.float32)
    for c in range(3):
        plane = out[0, c]
        np.subtract(img[:, :, 2 - c], mean[c], out=plane, dtype=np.float32)   # BGR -> RGB
        plane *= inv_std[c]
    return out if dtype == np.float32 else out.astype(dtype)
