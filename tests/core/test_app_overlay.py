"""The OpenCV-accelerated overlay is bit-exact with the plain NumPy statement of its formula
(the same formula the CUDA kernel computes: tests/test_cuda_kernels.py holds the two equal)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from core.overlay import blend_weights, nearest_indices, palette_bgr, render_overlay, upsample_labels


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


def test_addweighted_computes_the_fixed_point_blend_for_every_pixel_pair_and_alpha():
    """cv2.addWeighted with blend_weights(alpha) equals (image*(256-a) + color*a + 128) >> 8 for
    all 256 x 256 byte pairs and every a in 0..256, on this build of OpenCV."""
    image, color = (np.ascontiguousarray(np.broadcast_to(v[..., None], (256, 256, 3)))
                    for v in np.meshgrid(np.arange(256, dtype=np.uint8), np.arange(256, dtype=np.uint8)))
    wide_image, wide_color = image.astype(np.uint32), color.astype(np.uint32)
    for a in range(257):
        exact = ((wide_image * (256 - a) + wide_color * a + 128) >> 8).astype(np.uint8)
        w_image, w_color, bias = blend_weights(a / 256)
        assert np.array_equal(cv2.addWeighted(image, w_image, color, w_color, bias), exact), a


@pytest.mark.parametrize("src,dst", [((64, 96), (360, 480)), ((352, 480), (1080, 1920)), ((33, 47), (7, 203)),
                                     ((1, 1), (5, 3))])
def test_upsample_labels_picks_the_nearest_rule_source_for_every_pixel(src, dst):
    labels = np.random.default_rng(0).integers(0, 1000, src)
    want = labels[nearest_indices(dst[0], src[0])[:, None], nearest_indices(dst[1], src[1])[None, :]]
    assert np.array_equal(upsample_labels(labels, *dst), want)


@pytest.mark.parametrize("mode", ["overlay", "mask", "side-by-side"])
def test_render_overlay_of_views_matches_the_spec(mode):
    """A crop of a larger frame and a strided label map (one frame of a batch, every other
    column) give the same pixels as their contiguous copies."""
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (130, 250, 3), dtype=np.uint8)
    image = frame[5:125, 7:207]
    labels = rng.integers(0, 19, (2, 40, 120)).astype(np.int64)[1, :, ::2]
    lut = palette_bgr(rng.integers(0, 256, (19, 3)))
    out = render_overlay(image, labels, lut, 0.45, mode)
    assert np.array_equal(out, overlay_spec(np.ascontiguousarray(image), np.ascontiguousarray(labels), lut, 0.45, mode))
