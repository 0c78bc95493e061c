"""Zones rasterized at the label map's size: one small-integer *cell* per pixel, where a cell
is a set of zones (pixels inside the same zones share a cell; cell 0 of a frame with no zone
there is outside every zone). Overlapping zones cost nothing extra: the histogram runs over
(cell, class) once, and `membership` [cells x zones] sums the cells into zones. Column 0 is
the implicit whole-frame zone.

Polygons are `normalized` (x, y in 0..1 of the frame, the default) or `pixels` of the source
frame; either way they are drawn at the model's resolution (the label map), once per
(label size, source size) pair and cached.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from app.analytics.specs import FRAME_ZONE, ZoneSpec
from core.errors import InputError

MAX_CELLS = 256          # cells are uint8 (the GPU kernel reads one byte per pixel)


def inside_polygon(vertices: np.ndarray, h: int, w: int) -> np.ndarray:
    """bool [h, w]: pixels whose CENTER lies inside the polygon (even-odd rule, half-open
    edges: a pixel is in exactly one of two zones that share an edge)."""
    py = np.arange(h, dtype=np.float64)[:, None] + 0.5
    px = np.arange(w, dtype=np.float64)[None, :] + 0.5
    inside = np.zeros((h, w), bool)
    for (x1, y1), (x2, y2) in zip(vertices, np.roll(vertices, -1, axis=0)):
        if y1 == y2:
            continue
        crosses = (y1 > py) != (y2 > py)                       # [h, 1]
        x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)          # [h, 1]
        inside ^= crosses & (px < x_at)
    return inside


@dataclass
class Raster:
    names: list[str]            # zone names, [frame, zone1, ...]
    cells: np.ndarray           # uint8 [h, w]: the cell of each label pixel
    membership: np.ndarray      # int64 [cells, zones]: 1 where the cell lies in the zone
    area: np.ndarray            # int64 [zones]: pixels in each zone
    _cache: dict = field(default_factory=dict, repr=False)   # codes() and pair_weights(), made once

    @property
    def num_cells(self) -> int:
        return self.membership.shape[0]

    def codes(self, num_classes: int) -> np.ndarray:
        """uint8 [h, w]: cell * num_classes, the first byte code of each pixel's cell (a label
        adds its class); kept per class count. Only where cells x classes <= 256."""
        if num_classes not in self._cache:
            self._cache[num_classes] = (self.cells.astype(np.int32) * num_classes).astype(np.uint8)
        return self._cache[num_classes]

    def pair_weights(self, num_classes: int, pair_zone: np.ndarray, pair_class: np.ndarray):
        """For (zone, class) pairs: float64 [cells * classes, pairs], 1 where a cell's count of a
        class belongs to the pair's zone and class, and float64 [pairs], the zones' areas (at
        least 1); kept per pair list. A row of [cells x classes] counts @ the first is each
        pair's pixel count (exact: integers below 2^53)."""
        key = ("pairs", num_classes, pair_zone.tobytes(), pair_class.tobytes())
        if key not in self._cache:
            weights = np.zeros((self.num_cells, num_classes, len(pair_zone)))
            weights[:, pair_class, np.arange(len(pair_zone))] = self.membership[:, pair_zone]
            self._cache[key] = (weights.reshape(-1, len(pair_zone)),
                                np.maximum(self.area[pair_zone], 1).astype(np.float64))
        return self._cache[key]


class Zones:
    def __init__(self, specs: list[ZoneSpec], num_classes: int):
        self.specs = list(specs)
        self.names = [FRAME_ZONE] + [z.name for z in self.specs]
        self.num_classes = int(num_classes)
        self._cache: dict = {}

    def raster(self, label_hw: tuple[int, int], source_wh: tuple[int, int]) -> Raster:
        key = (tuple(label_hw), tuple(source_wh))
        if key not in self._cache:
            self._cache[key] = self._rasterize(*key)
        return self._cache[key]

    def _rasterize(self, label_hw, source_wh) -> Raster:
        h, w = label_hw
        bits = np.zeros((h, w), np.int64)
        for i, zone in enumerate(self.specs):
            mask = inside_polygon(self._vertices(zone, label_hw, source_wh), h, w)
            if not mask.any():
                raise InputError(f"zone {zone.name} covers no pixel of the {w}x{h} label map; make its polygon larger")
            bits |= mask.astype(np.int64) << i
        keys, inverse = np.unique(bits, return_inverse=True)
        if len(keys) > MAX_CELLS:
            raise InputError(f"{len(self.specs)} zones overlap in {len(keys)} different ways (at most {MAX_CELLS}); "
                             "use fewer overlapping zones")
        membership = np.ones((len(keys), len(self.names)), np.int64)   # column 0: the whole frame
        for i in range(len(self.specs)):
            membership[:, i + 1] = (keys >> i) & 1
        cells = inverse.reshape(h, w).astype(np.uint8)
        area = membership.T @ np.bincount(cells.ravel(), minlength=len(keys))
        return Raster(self.names, cells, membership, area)

    @staticmethod
    def _vertices(zone: ZoneSpec, label_hw, source_wh) -> np.ndarray:
        """The polygon in label-map pixel units (pixel j spans x in [j, j + 1))."""
        h, w = label_hw
        pts = np.asarray(zone.polygon, np.float64)
        if zone.coords == "normalized":
            return pts * np.array([w, h], np.float64)
        return pts * np.array([w / source_wh[0], h / source_wh[1]], np.float64)

    def outlines(self, image_wh: tuple[int, int], source_wh: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
        """[(zone name, int32 polygon in the pixels of an image of image_wh)], for the HUD."""
        out = []
        for zone in self.specs:
            pts = np.asarray(zone.polygon, np.float64)
            scale = (np.array(image_wh, np.float64) if zone.coords == "normalized"
                     else np.array(image_wh, np.float64) / np.array(source_wh, np.float64))
            out.append((zone.name, np.round(pts * scale).astype(np.int32)))
        return out
