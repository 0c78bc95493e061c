import subprocess
import sys

import pytest
import yaml

from core.model_config import ConfigError, list_model_names, load_model_config
from testkit.helpers import REPO

# mmsegmentation's own parameter counts (whole EncoderDecoder, auxiliary heads included).
MMSEG_PARAMS = {
    "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024": 13_425_721,
    "bisenetv1_r18-d32_4xb4-160k_coco-stuff164k-512x512": 13_484_545,
    "bisenetv1_r50-d32_4xb4-160k_cityscapes-1024x1024": 59_243_385,
    "bisenetv1_r50-d32_4xb4-160k_coco-stuff164k-512x512": 59_477_313,
    "bisenetv1_r101-d32_4xb4-160k_coco-stuff164k-512x512": 78_469_441,
}
SEED_ROWS = [n for n in list_model_names() if "camvid" not in n]


def test_eleven_seed_rows():
    assert len(SEED_ROWS) == 11
    for name in SEED_ROWS:
        cfg = load_model_config(name)
        assert cfg.name == name
        assert cfg.checkpoint_url.endswith(".pth") and cfg.checkpoint_url.startswith("https://download.openmmlab.com/")
        assert cfg.mean == [123.675, 116.28, 103.53] and cfg.std == [58.395, 57.12, 57.375]
        assert cfg.num_classes == (19 if "cityscapes" in name else 171)
        assert cfg.crop_size == ([1024, 1024] if "cityscapes" in name else [512, 512])


@pytest.mark.parametrize("name,count", sorted(MMSEG_PARAMS.items()))
def test_parameter_counts_equal_mmseg(name, count):
    from training.model import BiSeNetV1, count_parameters

    cfg = load_model_config(name)
    assert count_parameters(BiSeNetV1(cfg)) == count
    # the pretrained twin of a row has the same architecture
    for twin in SEED_ROWS:
        if twin.replace("-in1k-pre", "").replace("4xb8", "4xb4") == name:
            assert count_parameters(BiSeNetV1(load_model_config(twin))) == count


def test_r18_cityscapes_without_aux_heads():
    from training.model import BiSeNetV1, count_parameters

    cfg = load_model_config("bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024")
    assert count_parameters(BiSeNetV1(cfg, with_aux=False)) == 13_275_539


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    src = REPO / "configs/models/bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024.yaml"
    data = yaml.safe_load(src.read_text())
    data["backbone_detph"] = 18
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*backbone_detph"):
        load_model_config(bad)
    data.pop("backbone_detph")
    data["train"]["lr_typo"] = 1
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="lr_typo"):
        load_model_config(bad)


def test_unknown_model_name():
    with pytest.raises(ConfigError, match="bisenet models"):
        load_model_config("bisenetv1_r34_nonexistent")


def test_cli_models_lists_rows_with_miou():
    out = subprocess.run([sys.executable, "-m", "app.cli", "models"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    assert "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024" in out and "74.44" in out
    assert "bisenetv1_r101-d32-in1k-pre_4xb4-160k_coco-stuff164k-512x512" in out and "37.38" in out


def test_cli_help_lists_subcommands_with_examples():
    out = subprocess.run([sys.executable, "-m", "app.cli", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    for sub in ("models", "export"):
        assert sub in out
    sub_help = subprocess.run([sys.executable, "-m", "app.cli", "export", "--help"], cwd=REPO,
                              capture_output=True, text=True, check=True).stdout
    assert "Example: bisenet export" in sub_help
