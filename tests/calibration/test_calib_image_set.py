"""Calibration image sets: spread over sequences, deterministic for a seed, the app's own
preprocess, list files, folders and videos, the used list saved."""
import cv2
import numpy as np
import pytest

from core.preprocess import preprocess
from calibration.image_set import (CalibrationDataError, CalibrationSet, collect_items, sequence_of,
                                   spread_across_sequences)
from testkit.calib_fixtures import MEAN, STD, image_folder, list_dataset, video_file


@pytest.mark.parametrize("stem, seq", [("0016E5_07959", "0016E5"), ("0006R0_f02100", "0006R0"),
                                       ("aachen_000012_000019_leftImg8bit", "aachen"), ("frame-12", "frame")])
def test_sequence_names(stem, seq, tmp_path):
    assert sequence_of(tmp_path / f"{stem}.png") == seq


def test_draw_is_spread_across_sequences_and_deterministic(tmp_path):
    paths = [tmp_path / f"{seq}_{i:05d}.png" for seq, n in (("big", 30), ("mid", 6), ("small", 2)) for i in range(n)]
    picked = spread_across_sequences(paths, 9, seed=0)
    seqs = [sequence_of(p) for p in picked]
    assert seqs.count("small") == 2 and seqs.count("mid") == 3 and seqs.count("big") == 4
    assert picked == spread_across_sequences(list(reversed(paths)), 9, seed=0)   # input order does not matter
    assert picked != spread_across_sequences(paths, 9, seed=1)
    assert len(set(picked)) == 9


def test_folder_source_uses_subfolders_as_sequences_and_the_app_preprocess(tmp_path):
    root = tmp_path / "imgs"
    image_folder(root / "cityA", sequences=("x",), per_sequence=5)
    image_folder(root / "cityB", sequences=("y",), per_sequence=1)
    items = collect_items(root, 4, seed=3)
    assert len(items) == 4 and sum(it.path.parent.name == "cityB" for it in items) == 1
    cs = CalibrationSet(items, (64, 128), MEAN, STD, source=str(root))
    arrays = list(cs)
    assert all(a.shape == (1, 3, 64, 128) and a.dtype == np.float32 for a in arrays)
    ref = preprocess(cv2.imread(str(items[0].path)), (64, 128), MEAN, STD)
    np.testing.assert_array_equal(arrays[0], ref)
    assert [b.shape[0] for b in cs.batches(3)] == [3, 1]


def test_list_file_and_saved_list(tmp_path):
    cfg = list_dataset(tmp_path / "ds", num=4)
    items = collect_items(tmp_path / "ds" / "train.txt", 10, seed=0)
    assert len(items) == 4                      # fewer images than asked: all of them
    cs = CalibrationSet(items, (64, 128), MEAN, STD, source="train.txt")
    lines = cs.save_list(tmp_path / "out.calib.txt").read_text().splitlines()
    assert lines[0].startswith("# 4 calibration images") and lines[1:] == [str(it.path) for it in items]
    assert cfg.is_file()


def test_list_file_with_a_missing_image_names_the_line(tmp_path):
    (tmp_path / "l.txt").write_text("a.png b.png\n")
    with pytest.raises(CalibrationDataError, match=r"l.txt:1: image .*a.png does not exist"):
        collect_items(tmp_path / "l.txt", 4)


def test_video_frames_are_spread_over_the_clip(tmp_path):
    video = video_file(tmp_path / "clip.mp4", frames=24)
    items = collect_items(video, 4, seed=0)
    frames = [it.frame for it in items]
    assert len(frames) == 4 and frames == sorted(frames)
    assert [f // 6 for f in frames] == [0, 1, 2, 3]          # one frame from each quarter
    assert collect_items(video, 4, seed=0) == items
    arrays = list(CalibrationSet(items, (32, 64), MEAN, STD))
    assert len(arrays) == 4 and arrays[0].shape == (1, 3, 32, 64)
    assert not np.array_equal(arrays[0], arrays[3])


@pytest.mark.parametrize("data, match", [("nope.txt", "no such file"), ("x.bin", "not a list file")])
def test_bad_sources_say_what_to_pass(tmp_path, data, match):
    if data == "x.bin":
        (tmp_path / data).write_bytes(b"\0")
    with pytest.raises(CalibrationDataError, match=match):
        collect_items(tmp_path / data, 4)
