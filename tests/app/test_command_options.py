"""Every command's options are declared once beside it (core/options.py sections): the flags,
the train config keys and their ranges come from that one declaration, and `torchrun -m
training.train` (training.train's main) checks them as `bisenet train` does: one line, exit 2."""
from __future__ import annotations

import argparse

import pytest

from app.cli import main as bisenet_main
from core.model_config import ConfigError, TrainRecipe, model_config_from_dict, load_model_config
from training import train


def one_line_exit_2(call, argv, capsys) -> str:
    try:
        code = call(argv)
    except SystemExit as e:   # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (code, err)
    return err


@pytest.mark.parametrize("flags,expect", [
    (["--lr", "0"], "--lr 0.0 is out of range: expected a number above 0 up to 10"),
    (["--workers", "999"], "--workers 999 is out of range"),
    (["--crop-size", "16", "512"], "--crop-size 16 is out of range"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
])
def test_a_bad_flag_through_torchruns_entry_is_one_line_exit_2(flags, expect, capsys, tmp_path):
    argv = ["--work-dir", str(tmp_path / "w"), "--model", "m", "--dataset", "d", *flags]
    err = one_line_exit_2(train.main, argv, capsys)
    assert expect in err, err
    assert expect in one_line_exit_2(bisenet_main, ["train", *argv], capsys)   # the same words
    assert not (tmp_path / "w").exists()


def test_a_bad_key_of_a_train_config_names_the_file_and_key(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("model: m\ndataset: d\nwarmup_ratio: 2\n")
    err = one_line_exit_2(train.main, ["--config", str(config), "--work-dir", str(tmp_path / "w")], capsys)
    assert f"{config}: warmup_ratio 2 is out of range: expected a number from 0 to 1" in err, err


def test_flags_override_the_train_config_and_it_overrides_the_model_recipe(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("model: bisenetv1_r18-d32_camvid-360x480\ndataset: camvid\nlr: 0.5\niterations: 7\n")
    parser = argparse.ArgumentParser()
    train.add_arguments(parser)
    args = parser.parse_args(["--config", str(config), "--work-dir", "w", "--iterations", "9"])
    tc = train.config_from_args(args)
    recipe = tc.recipe(load_model_config(tc.model))
    assert (recipe["lr"], recipe["iterations"], recipe["momentum"]) == (0.5, 9, TrainRecipe().momentum)


def test_the_recipe_overrides_are_the_recipes_own_declarations():
    recipe = TrainRecipe.__pydantic_fields__
    overrides = train.TrainConfig.model_fields
    for name in set(recipe) - {"gpus"}:
        assert overrides[name].metadata == recipe[name].metadata, name          # the same range
        assert overrides[name].description == recipe[name].description, name  # the same help
    with pytest.raises(ConfigError, match=r"train.lr: 0 is out of range"):
        model_config_from_dict({**load_model_config("bisenetv1_r18-d32_camvid-360x480").to_dict(),
                                "train": {"lr": 0}})


@pytest.mark.parametrize("argv,expect", [
    (["export", "--model", "m", "--batch", "0", "-o", "x.onnx"], "--batch 0 is out of range"),
    (["calibrate", "--onnx", "x.onnx", "--data", "d", "-o", "y.onnx", "--min-class-share", "101"],
     "--min-class-share 101.0 is out of range"),
    (["build", "--onnx", "x.onnx", "-o", "y.engine", "--dla-core", "16"], "--dla-core 16 is out of range"),
    (["eval", "--model", "x.onnx", "--dataset", "camvid", "--threads", "0"], "--threads 0 is out of range"),
    (["serve-triton", "--onnx", "x.onnx", "--http-port", "0"], "--http-port 0 is out of range"),
])
def test_each_commands_declared_ranges_are_checked_before_it_runs(argv, expect, capsys):
    err = one_line_exit_2(bisenet_main, argv, capsys)
    assert err.startswith(f"bisenet {argv[0]}: error: ") and expect in err, err
