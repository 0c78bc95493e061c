"""Datasets and transforms on real files: layouts, label mapping, and errors that name the file."""
from __future__ import annotations


import cv2
import numpy as np
import pytest
import yaml

from testkit.helpers import SHARED_DATA
from training.datasets import SegDataset, coco_stuff_lut, load_dataset_config
from training.prepare import prepare_cityscapes
from training.transforms import TrainTransform, random_crop, rescale_size
from testkit.training_data import make_dataset

CAMVID = SHARED_DATA / "camvid"


def test_custom_list_dataset_loads_and_transforms(tmp_path):
    ds = SegDataset(load_dataset_config(make_dataset(tmp_path, h=48, w=64)), "train",
                    TrainTransform((40, 56), (64, 48), (0.5, 2.0), [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]))
    assert len(ds) == 4
    img, label = ds[(1, [0, 1, 5])]
    assert img.shape == (3, 40, 56) and img.dtype == np.float32
    assert label.shape == (40, 56) and set(np.unique(label)) <= {0, 1, 2, 255}
    again, again_label = ds[(1, [0, 1, 5])]
    assert np.array_equal(img, again) and np.array_equal(label, again_label)   # the seed fixes the augmentation


def test_pad_uses_255_for_labels_and_0_for_the_image(tmp_path):
    t = TrainTransform((96, 96), (64, 48), (1.0, 1.0), [0, 0, 0], [1, 1, 1], photometric=False)
    img = np.full((48, 64, 3), 10, np.uint8)
    out, label = t(img, np.zeros((48, 64), np.uint8), np.random.default_rng(0))
    assert out.shape == (3, 96, 96) and np.all(out[:, 48:, :] == 0) and np.all(label[48:, :] == 255)
    assert np.all(out[:, :48, :64] == 10) and np.all(label[:48, :64] == 0)


def test_random_crop_avoids_one_class_crops():
    label = np.zeros((100, 100), np.uint8)
    label[:, 60:] = 1                          # class 1 only in the right 40%
    img = np.zeros((100, 100, 3), np.uint8)
    for seed in range(5):
        _, crop = random_crop(img, label, np.random.default_rng(seed), (50, 50), cat_max_ratio=0.75)
        _, counts = np.unique(crop, return_counts=True)
        assert len(counts) == 2 and counts.max() / counts.sum() < 0.75


def test_keep_ratio_rescale_matches_mmcv():
    assert rescale_size(480, 360, (480, 360)) == (480, 360)
    assert rescale_size(2048, 1024, (1024, 512)) == (1024, 512)
    assert rescale_size(640, 480, (2048, 512)) == (683, 512)


def test_missing_image_is_named(tmp_path):
    cfg = make_dataset(tmp_path)
    (tmp_path / "images" / "train2.png").unlink()
    with pytest.raises(FileNotFoundError, match="train2.png"):
        SegDataset(load_dataset_config(cfg), "train")


def test_size_mismatch_is_named(tmp_path):
    cfg = make_dataset(tmp_path)
    cv2.imwrite(str(tmp_path / "labels" / "train1.png"), np.zeros((10, 10), np.uint8))
    ds = SegDataset(load_dataset_config(cfg), "train")
    with pytest.raises(ValueError, match=r"labels/train1.png: label is 10x10 but its image .*train1.png is 64x48"):
        ds.read(1)


def test_label_out_of_range_is_named(tmp_path):
    cfg = make_dataset(tmp_path)
    bad = np.zeros((48, 64), np.uint8)
    bad[5, 5] = 7
    cv2.imwrite(str(tmp_path / "labels" / "val0.png"), bad)
    ds = SegDataset(load_dataset_config(cfg), "val")
    with pytest.raises(ValueError, match=r"val0.png: label value 7 is outside 0..2"):
        ds.read(0)


def test_color_label_and_bad_list_line_are_named(tmp_path):
    cfg = make_dataset(tmp_path)
    cv2.imwrite(str(tmp_path / "labels" / "train0.png"), np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="train0.png: label has 3 channels"):
        SegDataset(load_dataset_config(cfg), "train").read(0)
    (tmp_path / "train.txt").write_text("images/train0.png\n")
    with pytest.raises(ValueError, match=r"train.txt:1: expected 'image label'"):
        SegDataset(load_dataset_config(cfg), "train")


def test_dataset_yaml_errors_name_the_key(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "kind": "list", "root": ".", "num_classes": 2, "colour": 1}))
    with pytest.raises(ValueError, match="colour"):
        load_dataset_config(path)
    path.write_text(yaml.safe_dump({"name": "x", "kind": "list", "root": ".", "num_classes": 2}))
    with pytest.raises(ValueError, match="needs class_names and palette"):
        load_dataset_config(path)


def test_coco_stuff_maps_182_raw_ids_to_171():
    lut = coco_stuff_lut()
    assert int((lut != 255).sum()) == 171
    assert lut[0] == 0 and lut[10] == 10 and lut[11] == 255 and lut[12] == 11
    assert lut[64] == 59 and lut[66] == 60 and lut[91] == 80 and lut[181] == 170 and lut[255] == 255


def test_coco_stuff_layout(tmp_path):
    for split in ("train2017", "val2017"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "images/val2017/000000000139.jpg"), np.zeros((20, 30, 3), np.uint8))
    raw = np.full((20, 30), 255, np.uint8)
    raw[:5] = 12
    raw[5:10] = 181
    cv2.imwrite(str(tmp_path / "annotations/val2017/000000000139.png"), raw)
    cfg = load_dataset_config("coco_stuff164k", root=str(tmp_path))
    _, label = SegDataset(cfg, "val").read(0)
    assert label[0, 0] == 11 and label[7, 0] == 170 and label[15, 0] == 255


def test_cityscapes_needs_prepare_then_loads(tmp_path):
    img_dir, gt_dir = tmp_path / "leftImg8bit/val/lindau", tmp_path / "gtFine/val/lindau"
    img_dir.mkdir(parents=True)
    gt_dir.mkdir(parents=True)
    cv2.imwrite(str(img_dir / "lindau_000000_000019_leftImg8bit.png"), np.zeros((16, 32, 3), np.uint8))
    ids = np.zeros((16, 32), np.uint8)
    ids[:4], ids[4:8], ids[8:12] = 7, 26, 33            # road, car, bicycle; the rest 'unlabeled'
    cv2.imwrite(str(gt_dir / "lindau_000000_000019_gtFine_labelIds.png"), ids)
    cfg = load_dataset_config("cityscapes", root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="bisenet prepare cityscapes"):
        SegDataset(cfg, "val")
    assert prepare_cityscapes(tmp_path, progress=False) == 1
    _, label = SegDataset(cfg, "val").read(0)
    assert label[0, 0] == 0 and label[5, 0] == 13 and label[9, 0] == 18 and label[13, 0] == 255
    assert prepare_cityscapes(tmp_path, progress=False) == 0          # already there: skipped


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"shared CamVid data not found at {CAMVID}")
def test_camvid_config_reads_the_shared_data():
    cfg = load_dataset_config("camvid", root=str(CAMVID))
    train, val = SegDataset(cfg, "train"), SegDataset(cfg, "val")
    assert (len(train), len(val)) == (367, 101)
    img, label = val.read(0)
    assert img.shape == (360, 480, 3) and label.shape == (360, 480)
    assert set(np.unique(label)) <= set(range(11)) | {255}
