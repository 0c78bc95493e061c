"""core/preprocess.py against the plain formula it implements, on a real CamVid frame."""
import cv2
import numpy as np
import pytest

from core.preprocess import preprocess
from testkit.helpers import SHARED_DATA

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def plain(bgr, h, w):
    img = cv2.resize(bgr, (w, h), interpolation=cv2.INTER_LINEAR)
    rgb = img[:, :, ::-1].astype(np.float32)
    chw = ((rgb - np.float32(MEAN)) * (1 / np.float32(STD))).transpose(2, 0, 1)
    return chw[None]


@pytest.mark.parametrize("size", [(512, 1024), (360, 480), (64, 96)])
def test_matches_the_formula_bit_for_bit(size):
    frames = sorted((SHARED_DATA / "camvid" / "val").glob("*.jpg"))
    if not frames:
        pytest.skip(f"no CamVid frames under {SHARED_DATA}")
    bgr = cv2.imread(str(frames[0]))
    out = preprocess(bgr, size, MEAN, STD)
    assert out.shape == (1, 3, *size) and out.dtype == np.float32 and out.flags.c_contiguous
    assert np.array_equal(out, plain(bgr, *size))
    half = preprocess(bgr, size, MEAN, STD, np.float16)
    assert half.dtype == np.float16 and np.array_equal(half, plain(bgr, *size).astype(np.float16))


def test_rejects_non_uint8_bgr():
    with pytest.raises(ValueError, match="uint8 BGR"):
        preprocess(np.zeros((10, 10), np.uint8), (32, 32), MEAN, STD)
