"""Coverage: for every zone and class, the share of the zone's pixels with that class, from
ONE histogram pass over (cell, class) (app/analytics/zones.py) summed into zones by the
membership matrix (pair_ratios: the pairs a camera reports; coverage_ratios: every pair).
cell_histogram is the reference the CUDA kernel `zone_histogram` (engines/overlay.cu) is held
to bit for bit: the kernel returns the same [cells x classes] counts from the labels on the
device.
"""
from __future__ import annotations

import cv2
import numpy as np

from app.analytics.zones import Raster


# Stripes the byte codes are read in, in turn (see cell_histogram).
STRIPES = 64


def cell_histogram(labels: np.ndarray, raster: Raster, num_classes: int) -> np.ndarray:
    """labels [h, w] (any integer type, values < num_classes) -> uint32 [cells, classes] pixel counts.

    Where cells x classes <= 256 (4 zones, 11 classes: 6 x 11), each pixel's (cell, class) is one
    byte, cell * classes + label (one saturating cv2.add), counted by OpenCV's calcHist. A row of
    pixels of one code makes calcHist's increments of that bin wait on each other; a transpose of
    the codes as 64 stripes (8 us) has it read 64 distant places of the image in turn. On a
    2-vCPU Xeon (AMX), a 352x480 map of the street clip, in a tight loop: 0.10 ms against 0.31 ms
    for the 2-D calcHist of (cell, label) it replaces; right after an inference (cold caches, as
    in the app) 0.25 ms against 0.36 ms. The counts are float32, exact below 2^24 pixels; more
    cells x classes or larger maps take np.bincount (the same counts)."""
    n = raster.num_cells * num_classes
    if n <= 256 and labels.size < 1 << 24:
        code = cv2.add(raster.codes(num_classes), labels.astype(np.uint8, copy=False)).reshape(-1)
        m = code.size - code.size % STRIPES
        hist = cv2.calcHist([cv2.transpose(code[:m].reshape(STRIPES, -1))], [0], None, [n], [0, n]) if m else 0
        if m < code.size:   # the pixels past the last whole stripe row, as they are
            hist = hist + cv2.calcHist([code[m:].reshape(1, -1)], [0], None, [n], [0, n])
        return hist.astype(np.uint32).reshape(raster.num_cells, num_classes)
    index = raster.cells.astype(np.int32) * num_classes + labels.astype(np.int32, copy=False)
    counts = np.bincount(index.ravel(), minlength=n)
    return counts.astype(np.uint32).reshape(raster.num_cells, num_classes)


def pair_ratios(cell_counts: np.ndarray, raster: Raster, pair_zone: np.ndarray, pair_class: np.ndarray) -> list:
    """[cells, classes] counts -> [the share of zone pair_zone[i]'s pixels with class
    pair_class[i] for each i] (zone 0: the whole frame): one product with the raster's cached
    0/1 weights, one division."""
    weights, area = raster.pair_weights(cell_counts.shape[-1], pair_zone, pair_class)
    return (cell_counts.reshape(-1) @ weights / area).tolist()


def coverage_ratios(labels: np.ndarray, raster: Raster, num_classes: int) -> np.ndarray:
    """float64 [zones, classes]: the share of each zone's pixels that has each class."""
    zones = len(raster.names)
    pair_zone, pair_class = (a.ravel() for a in np.indices((zones, num_classes)))
    ratios = pair_ratios(cell_histogram(labels, raster, num_classes), raster, pair_zone, pair_class)
    return np.array(ratios).reshape(zones, num_classes)


def brute_force_ratios(labels: np.ndarray, masks: list[np.ndarray], num_classes: int) -> np.ndarray:
    """The same numbers the slow, obvious way (tests): per zone mask, count each class."""
    out = np.zeros((len(masks), num_classes))
    for z, mask in enumerate(masks):
        inside = labels[mask.astype(bool)]
        for c in range(num_classes):
            out[z, c] = np.count_nonzero(inside == c) / max(inside.size, 1)
    return out
