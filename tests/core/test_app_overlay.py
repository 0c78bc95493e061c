"""The OpenCV-accelerated overlay is bit-exact with the plain NumPy statement of its formula."""
from __future__ import annotations

import numpy as np
import pytest

from core.overlay import nearest_indices, palette_bgr, render_overlay


def overlay_spec(image, labels, lut, alpha, mode):
    """The overlay as first written on main (2-D fancy index, uint16 NumPy blend)."""
    h, w = labels.shape
    H, W = image.shape[:2]
    up = labels[nearest_indices(H, h)[:, None], nearest_indices(W, w)[None, :]]
    color = lut[up.astype(np.uint8)]
    if mode == "mask":
        return color
    a = int(round(alpha * 256))
    blended = ((image.astype(np.uint16) * (256 - a) + color.astype(np.uint16) * a + 128) >> 8).astype(np.uint8)
    return np.concatenate([image, blended], axis=1) if mode == "side-by-side" else blended


@pytest.mark.parametrize("mode", ["overlay", "mask", "side-by-side"])
@pytest.mark.parametrize("alpha", [0.0, 0.37, 0.5, 1.0])
@pytest.mark.parametrize("src,dst", [((64, 96), (360, 480)), ((33, 47), (101, 203)), ((50, 60), (50, 60)),
                                     ((64, 64), (31, 17))])
def test_render_overlay_matches_the_spec(mode, alpha, src, dst):
    rng = np.random.default_rng(sum(src) + sum(dst))
    image = rng.integers(0, 256, (*dst, 3), dtype=np.uint8)
    labels = rng.integers(0, 22, src).astype(np.int32)      # 19 classes + ids past the palette (black)
    lut = palette_bgr(rng.integers(0, 256, (19, 3)))
    out = render_overlay(image, labels, lut, alpha, mode)
    assert out.dtype == np.uint8
    assert np.array_equal(out, overlay_spec(image, labels, lut, alpha, mode))
