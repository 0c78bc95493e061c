"""The zone-histogram kernel (engines/overlay.cu `zone_histogram`) held to the numpy reference
(app/analytics/coverage.py cell_histogram) bit for bit: on every machine as host C++ (the same
build tests/engines/test_cuda_kernels.py uses), with a GPU (marked gpu) through pycuda or CuPy."""
from __future__ import annotations

import ctypes

import cv2
import numpy as np
import pytest

from app.analytics.coverage import cell_histogram
from app.analytics.specs import ZoneSpec
from app.analytics.zones import Zones
from engines import cuda_kernels as ck
from testkit.cuda_host import DATA, gpu_kernels, host, needs_data, ptr  # noqa: F401  (host: a fixture)

P, I, U = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint
CAMVID_CLASSES = 11

ZONES = [ZoneSpec(name="lane", polygon=[(0.3, 0.55), (0.7, 0.55), (0.95, 1.0), (0.05, 1.0)]),
         ZoneSpec(name="left", polygon=[(0.0, 0.3), (0.5, 0.3), (0.5, 1.0), (0.0, 1.0)]),   # overlaps lane
         ZoneSpec(name="sky", polygon=[(0, 0), (480, 0), (480, 120), (0, 120)], coords="pixels")]


def host_histogram(so, labels, cells, num_cells, num_classes):
    """What CudaKernels.zone_histogram does on a GPU: same grid, same arguments."""
    so.host_zone_histogram.argtypes = [U, U, U, U, U, P, I, I, P, I, I, I, P]
    labels = np.ascontiguousarray(labels)
    plane = labels.shape[-2] * labels.shape[-1]
    frames = labels.size // plane
    counts = np.zeros((frames, num_cells, num_classes), np.uint32)
    args = ck.zone_histogram_args(0, plane, labels.dtype, 0, cells.size == plane, num_classes, num_cells, 0)
    so.host_zone_histogram(*ck.grid_1d(plane, frames), *ck.BLOCK_1D[:2], ptr(labels), int(args[1]), int(args[2]),
                           ptr(np.ascontiguousarray(cells)), int(args[4]), int(args[5]), int(args[6]), ptr(counts))
    return counts


def camvid_label_maps(n=3):
    paths = sorted((DATA / "camvid" / "valannot").glob("0016E5_*.png"))[:n]
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in paths]


@needs_data
@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_host_zone_histogram_equals_numpy_on_camvid_labels(host, dtype):
    labels = camvid_label_maps(1)[0]                       # 360x480, ids 0..11 (11: unlabelled)
    raster = Zones(ZONES, CAMVID_CLASSES + 1).raster(labels.shape, (480, 360))
    ref = cell_histogram(labels, raster, CAMVID_CLASSES + 1)
    got = host_histogram(host, labels.astype(dtype), raster.cells, raster.num_cells, CAMVID_CLASSES + 1)
    assert got.dtype == ref.dtype and np.array_equal(got[0], ref)
    assert got.sum() == labels.size


@needs_data
def test_host_zone_histogram_batched_per_frame_cells(host):
    """A batch of frames of different cameras (own cell maps) in one launch = each frame alone."""
    maps = np.stack(camvid_label_maps(3)).astype(np.int32)
    zones = [Zones(ZONES[i:], CAMVID_CLASSES + 1).raster(maps.shape[1:], (480, 360)) for i in range(3)]
    num_cells = max(z.num_cells for z in zones)
    cells = np.stack([z.cells for z in zones])
    got = host_histogram(host, maps, cells, num_cells, CAMVID_CLASSES + 1)
    for i, z in enumerate(zones):
        ref = cell_histogram(maps[i], z, CAMVID_CLASSES + 1)
        assert np.array_equal(got[i, :z.num_cells], ref), i
        assert not got[i, z.num_cells:].any()


def test_host_zone_histogram_skips_labels_outside_the_classes(host):
    labels = np.array([[0, 1, 2, 5], [-1, 3, 4, 9]], np.int32)
    cells = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], np.uint8)
    got = host_histogram(host, labels, cells, 2, 5)[0]
    assert got.tolist() == [[1, 0, 0, 1, 1], [0, 1, 1, 0, 0]]


@pytest.mark.gpu
@needs_data
def test_gpu_zone_histogram_equals_numpy():
    k = gpu_kernels()
    maps = np.stack(camvid_label_maps(3)).astype(np.int64)
    raster = Zones(ZONES, CAMVID_CLASSES + 1).raster(maps.shape[1:], (480, 360))
    got = k.zone_histogram(maps, raster.cells, raster.num_cells, CAMVID_CLASSES + 1)
    for i in range(len(maps)):
        assert np.array_equal(got[i], cell_histogram(maps[i], raster, CAMVID_CLASSES + 1)), i
