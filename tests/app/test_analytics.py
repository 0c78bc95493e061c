"""Scene analytics without a network: zones rasterized, coverage against brute force on real
CamVid labels, rules (hold time, hysteresis, cooldown) on synthetic coverage series, config
errors as one line."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from app.analytics.coverage import brute_force_ratios, cell_histogram, coverage_ratios, pair_ratios
from app.analytics.rules import RuleState
from app.analytics.specs import CameraAnalytics, RuleSpec, ZoneSpec, parse_camera_analytics
from app.analytics.zones import Zones
from core.errors import InputError
from testkit.cuda_host import DATA, needs_data

CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car", "pedestrian",
           "bicyclist"]


def zone(name, polygon, **kw):
    return ZoneSpec(name=name, polygon=polygon, **kw)


# -- zones -----------------------------------------------------------------------------------------

def test_a_normalized_rectangle_covers_its_pixels():
    raster = Zones([zone("box", [(0.25, 0.5), (0.75, 0.5), (0.75, 1.0), (0.25, 1.0)])], 3).raster((8, 16), (480, 360))
    mask = raster.membership[raster.cells, 1].astype(bool)
    expected = np.zeros((8, 16), bool)
    expected[4:, 4:12] = True
    assert np.array_equal(mask, expected)
    assert raster.area.tolist() == [128, 32]


def test_pixel_coordinates_scale_from_the_source_frame():
    norm = Zones([zone("a", [(0.1, 0.2), (0.6, 0.25), (0.5, 0.9)])], 3).raster((90, 120), (480, 360))
    pix = Zones([zone("a", [(48, 72), (288, 90), (240, 324)], coords="pixels")], 3).raster((90, 120), (480, 360))
    assert np.array_equal(norm.cells, pix.cells)


def test_overlapping_zones_get_their_own_cells_and_the_raster_is_cached():
    zones = Zones([zone("l", [(0, 0), (0.6, 0), (0.6, 1), (0, 1)]), zone("r", [(0.4, 0), (1, 0), (1, 1), (0.4, 1)])], 3)
    raster = zones.raster((10, 10), (100, 100))
    assert raster.num_cells == 3                   # left only, both, right only
    assert raster.area.tolist() == [100, 60, 60]
    assert zones.raster((10, 10), (100, 100)) is raster


def test_a_zone_smaller_than_a_pixel_is_one_line():
    with pytest.raises(InputError, match="covers no pixel"):
        Zones([zone("dot", [(0.5, 0.5), (0.501, 0.5), (0.5, 0.501)])], 3).raster((8, 8), (64, 64))


# -- coverage --------------------------------------------------------------------------------------

@needs_data
def test_coverage_equals_brute_force_on_camvid_labels():
    specs = [zone("lane", [(0.3, 0.55), (0.7, 0.55), (0.95, 1.0), (0.05, 1.0)]),
             zone("left", [(0.0, 0.3), (0.5, 0.3), (0.5, 1.0), (0.0, 1.0)]),
             zone("top", [(0, 0), (480, 0), (480, 100), (0, 100)], coords="pixels")]
    zones = Zones(specs, 12)
    for path in sorted((DATA / "camvid" / "valannot").glob("0016E5_*.png"))[:3]:
        labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        for size in ((360, 480), (90, 120)):
            small = cv2.resize(labels, size[::-1], interpolation=cv2.INTER_NEAREST)
            raster = zones.raster(small.shape, (480, 360))
            masks = [raster.membership[raster.cells, z].astype(bool) for z in range(len(raster.names))]
            got = coverage_ratios(small, raster, 12)
            assert np.allclose(got, brute_force_ratios(small, masks, 12), rtol=0, atol=1e-12)
            assert np.allclose(got.sum(axis=1), 1.0)


def test_the_histogram_counts_the_same_by_opencv_and_by_bincount():
    """Up to 256 cells x classes the (cell, class) counts come from cv2.calcHist of one byte per
    pixel read in stripes, above from np.bincount: the same counts, for every label dtype the
    engines hand over, for maps whose size is a whole number of stripe rows (352x480), is not
    (90x120: a tail) or is smaller than one (5x7), and for real labels with long runs of a class."""
    zones = Zones([zone("a", [(0.1, 0.1), (0.6, 0.1), (0.6, 0.9)]), zone("b", [(0.4, 0.0), (1.0, 0.0), (1.0, 1.0)])], 300)
    rng = np.random.default_rng(0)
    camvid = sorted((DATA / "camvid" / "valannot").glob("0016E5_*.png"))[:1]
    for hw in ((90, 120), (352, 480), (5, 7)):
        raster = zones.raster(hw, (480, 360))
        maps = [rng.integers(0, 12, hw)] + [cv2.resize(cv2.imread(str(p), cv2.IMREAD_UNCHANGED), hw[::-1],
                                                       interpolation=cv2.INTER_NEAREST) for p in camvid]
        for labels in maps:
            for dtype in (np.uint8, np.int32, np.int64):
                opencv = cell_histogram(labels.astype(dtype), raster, 12)   # 4 cells x 12 <= 256: calcHist
                numpy = cell_histogram(labels.astype(dtype), raster, 300)[:, :12]  # > 256: bincount
                assert opencv.dtype == np.uint32 and opencv.sum() == labels.size
                assert np.array_equal(opencv, numpy), (hw, dtype)


def test_the_reported_pairs_get_the_same_ratios_as_the_whole_table():
    zones = Zones([zone("a", [(0.1, 0.1), (0.6, 0.1), (0.6, 0.9)]), zone("b", [(0.4, 0.0), (1.0, 0.0), (1.0, 1.0)])], 12)
    labels = np.random.default_rng(1).integers(0, 12, (90, 120))
    raster = zones.raster(labels.shape, (480, 360))
    table = coverage_ratios(labels, raster, 12)
    pair_zone, pair_class = np.array([2, 0, 1, 2], np.intp), np.array([7, 3, 3, 0], np.intp)
    got = pair_ratios(cell_histogram(labels, raster, 12), raster, pair_zone, pair_class)
    assert got == [table[z, c] for z, c in zip(pair_zone, pair_class)]


def test_coverage_log_rows_put_each_camera_s_pairs_under_their_columns(tmp_path):
    """Two cameras reporting different (zone, class) pairs share one CSV: each row fills its own
    columns and leaves the others empty; a pair first seen later starts a part with a new header."""
    import csv
    from types import SimpleNamespace

    from app.analytics import CoverageLog

    log = CoverageLog(str(tmp_path / "cov.csv"), {"cam0": SimpleNamespace(watched={"road": ["car"]})})
    cam0, cam1 = (("road", "car"),), (("sky", "sky"), ("road", "car"))
    log.write("cam0", 1, 0.5, cam0, [0.25])
    log.write("cam1", 7, 0.75, cam1, [1 / 3, 0.5])
    log.write("cam0", 2, 1.0, cam0, [0.125])
    log.close()
    first, live = log.file.parts()
    assert first.read_bytes() == b"camera,frame,time_s,road:car\r\ncam0,1,0.5000,0.25000\r\n"
    rows = list(csv.DictReader(live.open(newline="")))
    assert rows == [{"camera": "cam1", "frame": "7", "time_s": "0.7500", "road:car": "0.50000", "sky:sky": "0.33333"},
                    {"camera": "cam0", "frame": "2", "time_s": "1.0000", "road:car": "0.12500", "sky:sky": ""}]


# -- rules -----------------------------------------------------------------------------------------

def run_rule(spec: RuleSpec, series, dt=0.1):
    state = RuleState(spec, "cam0")
    out = []
    for i, cov in enumerate(series):
        out += [(kind, round(i * dt, 3), event) for kind, event in state.update(i * dt, cov, i)]
    return out, state


def rule(**kw):
    return RuleSpec(**{"class": "car", "zone": "frame", **kw})


def test_an_event_starts_after_the_hold_time_and_ends_after_the_clear_time():
    series = [0.0] * 5 + [0.5] * 20 + [0.0] * 20
    out, _ = run_rule(rule(above=0.3, for_s=0.5, clear_s=0.5), series)
    assert [(k, t) for k, t, _ in out] == [("start", 1.0), ("end", 3.0)]
    event = out[-1][2]
    assert (event.start_s, event.start_frame) == (0.5, 5)      # when the condition began to hold
    assert (event.end_s, event.end_frame) == (2.5, 25)
    assert event.peak == 0.5 and event.frames == 20 and event.mean == 0.5   # onset to clear onset


def test_a_short_blip_never_starts_an_event():
    series = [0.0] * 5 + [0.5] * 4 + [0.0] * 5 + [0.5] * 3 + [0.0] * 10
    out, _ = run_rule(rule(above=0.3, for_s=0.5), series)
    assert out == []


def test_hysteresis_a_flickering_mask_keeps_one_event():
    # Above 0.3 starts; only below clear 0.1 for 1 s ends: flicker between 0.2 and 0.5 is one event.
    flicker = [0.5, 0.2] * 30
    out, state = run_rule(rule(above=0.3, for_s=0.0, clear=0.1, clear_s=1.0), flicker + [0.0] * 20)
    assert [k for k, _, _ in out] == ["start", "end"]
    # Without hysteresis the same series starts and ends an event on every flicker.
    out2, _ = run_rule(rule(above=0.3, for_s=0.0, clear_s=0.0), flicker)
    assert sum(1 for k, _, _ in out2 if k == "start") == 30


def test_cooldown_holds_back_a_new_start():
    series = ([0.6] * 5 + [0.0] * 5) * 4
    out, _ = run_rule(rule(above=0.3, for_s=0.0, clear_s=0.0, cooldown_s=1.5), series)
    starts = [t for k, t, _ in out if k == "start"]
    assert starts == [0.0, 2.0]          # the start at 1.0 falls in the cooldown after the end at 0.5
    out, _ = run_rule(rule(above=0.3, for_s=0.0, clear_s=0.0), series)
    assert [t for k, t, _ in out if k == "start"] == [0.0, 1.0, 2.0, 3.0]


def test_below_rules_and_their_peak_is_the_lowest_value():
    series = [0.8] * 5 + [0.2, 0.1, 0.15, 0.2] + [0.8] * 10
    out, _ = run_rule(rule(below=0.3, for_s=0.0, clear_s=0.2), series)
    assert [k for k, _, _ in out] == ["start", "end"]
    assert out[-1][2].peak == 0.1


def test_updates_only_when_the_peak_grows():
    series = [0.4] * 5 + [0.5] * 15 + [0.51] * 15 + [0.7] * 15
    out, _ = run_rule(rule(above=0.3, for_s=0.0), series)
    assert [k for k, _, _ in out] == ["start", "update", "update"]


def test_an_open_event_ends_with_the_stream():
    state = RuleState(rule(above=0.3, for_s=0.0), "cam0")
    assert state.update(0.0, 0.9, 0)[0][0] == "start"
    [(kind, event)] = state.finish(4.0, 40)
    assert kind == "end" and event.end_s == 4.0


# -- config errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize("zones,rules,message", [
    ([{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]], "classes": ["cars"]}], [],
     "zone a: unknown class 'cars'; the model's classes: sky, building"),
    ([], [{"class": "truck", "above": 0.1}], "unknown class 'truck'; the model's classes: sky"),
    ([], [{"class": "car", "zone": "lane", "above": 0.1}], "unknown zone 'lane'"),
    ([{"name": "a", "polygon": [[0, 0], [2, 0], [1, 1]]}], [], "normalized coordinates must lie in 0..1"),
    ([{"name": "a", "polygon": [[0, 0], [1, 0]]}], [], "zones.0.polygon"),
    ([], [{"class": "car"}], "exactly one of above: or below:"),
    ([], [{"class": "car", "above": 0.2, "clear": 0.3}], "must not be above"),
    ([], [{"class": "car", "above": 0.2, "for": 1}], "rules.0.for"),
    ([{"name": "frame", "polygon": [[0, 0], [1, 0], [1, 1]]}], [], "implicit whole-frame zone"),
    ([{"name": "a", "polygon": [[0, 0], [100, 0], [float("nan"), 50]], "coords": "pixels"}], [], "finite numbers"),
    ([{"name": "a", "polygon": [[float("inf")] * 2] * 3, "coords": "pixels"}], [], "finite numbers"),
    ([{"name": "a", "polygon": [[0, 0], [1e300, 0], [0, 1e300]], "coords": "pixels"}], [], "must lie in 0..16384"),
    ([{"name": "a", "polygon": [[0, 0], [0.5, 0.5], [1, 1]]}], [], "encloses no area"),
    ([{"name": "a", "polygon": [[0, 0], [1, 1], [0, 0], [1, 1]]}], [], "at least 3 different points"),
    ([{"name": "lane\n", "polygon": [[0, 0], [1, 0], [1, 1]]}], [], "zone name 'lane\\n'"),
    ([], [{"name": "r\n", "class": "car", "above": 0.1}], "rule name 'r\\n'"),
    ([], [{"name": "a+b", "class": "car", "above": 0.1}], "rule name 'a+b'"),
    ([], [{"class": "car", "above": 0.1, "max_clip_s": 0}], "rules.0.max_clip_s"),
])
def test_bad_configs_are_one_line(zones, rules, message):
    with pytest.raises(InputError) as e:
        parse_camera_analytics(zones, rules, "preset.yaml").check_classes(CLASSES, "preset.yaml")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_watched_classes_include_the_rules_classes():
    config = CameraAnalytics(zones=[zone("lane", [(0, 0), (1, 0), (1, 1)], classes=["road"])],
                             rules=[rule(zone="lane", above=0.1), rule(**{"class": "sky"}, above=0.5)])
    config.check_classes(CLASSES, "x")
    assert config.watched() == {"lane": ["road", "car"], "frame": ["sky"]}
