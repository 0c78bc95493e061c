"""CPU overlay: the reference the CUDA overlay kernel is held to.

labels at model resolution -> nearest upsample to the source size -> palette -> alpha blend.
Nearest sampling uses half-pixel centers in exact integer arithmetic:
    src_y = ((2*y + 1) * h) // (2 * H)      (and likewise for x)
so the CPU and the kernel pick the same source label for every output pixel. The blend is
    (image * (256 - a) + color * a + 128) >> 8      with a = round(alpha * 256),
round-half-up of the float formula for alpha in 1/256ths, on both sides.
"""
from __future__ import annotations

import cv2
import numpy as np

MODES = ("overlay", "mask", "side-by-side")


def nearest_indices(dst: int, src: int) -> np.ndarray:
    return ((2 * np.arange(dst, dtype=np.int64) + 1) * src) // (2 * dst)


def upsample_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    h, w = labels.shape
    if (h, w) == (height, width):
        return labels
    # Columns at the label map's height, then whole rows: the second gather copies rows.
    return np.take(np.take(labels, nearest_indices(width, w), axis=1), nearest_indices(height, h), axis=0)


def palette_bgr(palette_rgb: np.ndarray) -> np.ndarray:
    """[C, 3] RGB -> [256, 3] BGR lookup table; labels outside the palette draw black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    pal = np.asarray(palette_rgb, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[: len(pal)] = pal[:, ::-1]
    return lut


def upsample_colors(labels: np.ndarray, lut_bgr: np.ndarray, height: int, width: int) -> np.ndarray:
    """labels [h, w] -> their palette colors at [height, width, 3], by the nearest rule above.

    The palette lookup at the label map's size, each color one 32-bit word (BGR + a pad byte)
    so the column gather moves whole pixels; columns at the label map's height (a few hundred
    rows); then a gather of whole rows: only that last step touches every output pixel.
    """
    h, w = labels.shape
    # Ids wrap to their low byte, as in the kernel; ids above 255 cannot occur (<= 171 classes).
    index = labels.astype(np.uint8, copy=False)
    words = cv2.cvtColor(np.ascontiguousarray(lut_bgr).reshape(256, 1, 3), cv2.COLOR_BGR2BGRA).view(np.uint32).ravel()
    columns = np.take(np.take(words, index), nearest_indices(width, w), axis=1).view(np.uint8).reshape(h, width, 4)
    return np.take(cv2.cvtColor(columns, cv2.COLOR_BGRA2BGR), nearest_indices(height, h), axis=0)


def blend_weights(alpha: float) -> tuple[float, float, float]:
    """cv2.addWeighted's (alpha, beta, gamma) that compute the fixed-point blend exactly.

    With a = round(alpha * 256) the weights (256 - a)/256 and a/256 are exact binary fractions,
    so image * w1 + color * w2 is exact in float32 and a multiple of 1/256; adding 1/512 puts
    it strictly between two halves, so rounding to nearest (any tie rule) gives
    (image * (256 - a) + color * a + 128) >> 8. tests/test_app_overlay.py checks every pair.
    """
    a = int(round(alpha * 256))
    return (256 - a) / 256, a / 256, 1 / 512


def render_overlay(image_bgr: np.ndarray, labels: np.ndarray, lut_bgr: np.ndarray,
                   alpha: float = 0.5, mode: str = "overlay") -> np.ndarray:
    """image uint8 BGR HxWx3, labels [h, w] ints, lut from palette_bgr -> uint8 BGR.

    overlay: round(image * (1 - alpha) + color * alpha); mask: the colors alone;
    side-by-side: the source on the left, the overlay on the right (2W wide).
    """
    if mode not in MODES:
        raise ValueError(f"unknown overlay mode {mode!r}: use one of {', '.join(MODES)}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {alpha}")
    height, width = image_bgr.shape[:2]
    color = upsample_colors(labels, lut_bgr, height, width)
    if mode == "mask":
        return color
    w_image, w_color, bias = blend_weights(alpha)
    if mode == "side-by-side":
        out = np.empty((height, 2 * width, 3), np.uint8)
        out[:, :width] = image_bgr
        cv2.addWeighted(image_bgr, w_image, color, w_color, bias, dst=out[:, width:])
        return out
    return cv2.addWeighted(image_bgr, w_image, color, w_color, bias)
