"""CPU overlay: the reference the CUDA overlay kernel is held to.

labels at model resolution -> nearest upsample to the source size -> palette -> alpha blend.
Nearest sampling uses half-pixel centers in exact integer arithmetic:
    src_y = ((2*y + 1) * h) // (2 * H)      (and likewise for x)
so the CPU and the kernel pick the same source label for every output pixel. The blend is
    (image * (256 - a) + color * a + 128) >> 8      with a = round(alpha * 256),
round-half-up of the float formula for alpha in 1/256ths, on both sides. Here it is computed
with OpenCV and NumPy gathers (render_overlay says how); tests/test_app_overlay.py holds it to
the plain NumPy statement of the formula, tests/test_cuda_kernels.py the kernel to it.
"""
from __future__ import annotations

import cv2
import numpy as np

MODES = ("overlay", "mask", "side-by-side")
BAND_BYTES = 512 * 1024   # rows blended per step: about this many bytes of each full-size image


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


def column_colors(labels: np.ndarray, lut_bgr: np.ndarray, width: int) -> np.ndarray:
    """labels [h, w] -> their palette colors [h, width, 3]: columns upsampled by the nearest
    rule above, rows not yet (a few hundred rows: cheap at any frame size).

    The palette lookup at the label map's size gives each color as one 32-bit word (BGR + a pad
    byte), so the column gather moves whole pixels.
    """
    h, w = labels.shape
    # Ids wrap to their low byte, as in the kernel; ids above 255 cannot occur (<= 171 classes).
    index = labels.astype(np.uint8, copy=False)
    words = cv2.cvtColor(np.ascontiguousarray(lut_bgr).reshape(256, 1, 3), cv2.COLOR_BGR2BGRA).view(np.uint32).ravel()
    columns = np.take(np.take(words, index), nearest_indices(width, w), axis=1).view(np.uint8).reshape(h, width, 4)
    return cv2.cvtColor(columns, cv2.COLOR_BGRA2BGR)


def upsample_colors(labels: np.ndarray, lut_bgr: np.ndarray, height: int, width: int) -> np.ndarray:
    """labels [h, w] -> their palette colors [height, width, 3], by the nearest rule above."""
    return np.take(column_colors(labels, lut_bgr, width), nearest_indices(height, labels.shape[0]), axis=0)


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
    if mode == "mask":
        return upsample_colors(labels, lut_bgr, height, width)
    colors = column_colors(labels, lut_bgr, width)
    rows = nearest_indices(height, labels.shape[0])
    out = np.empty((height, 2 * width if mode == "side-by-side" else width, 3), np.uint8)
    blended = out
    if mode == "side-by-side":
        out[:, :width] = image_bgr
        blended = out[:, width:]
    # Band by band, so each band's full-size color rows are still in cache when blended: one
    # pass over the frame instead of writing a full-size color image and reading it back.
    w_image, w_color, bias = blend_weights(alpha)
    band = max(16, BAND_BYTES // (3 * width))
    color = np.empty((min(band, height), width, 3), np.uint8)
    for y in range(0, height, band):
        n = min(band, height - y)
        # mode="clip" (the rows are in range): with out=, the default "raise" goes through a copy.
        np.take(colors, rows[y:y + n], axis=0, out=color[:n], mode="clip")
        cv2.addWeighted(image_bgr[y:y + n], w_image, color[:n], w_color, bias, dst=blended[y:y + n])
    return out
