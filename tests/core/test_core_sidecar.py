"""The model contract declared once: the Sidecar model (core/sidecar.py) and the model config
fields that share its types (core/model_config.py). The one-line wording of each refusal is
held by tests/app/test_validate.py through `bisenet run`; here the model itself."""
from __future__ import annotations

import json

import pytest
import yaml

from core.errors import InputError
from core.model_config import MODELS_DIR, ConfigError, load_model_config
from core.sidecar import SIDECAR_REQUIRED, Sidecar, SidecarError, check_sidecar, read_sidecar, write_sidecar

META = {"model": "tiny", "classes": ["road", "tree", "car"], "palette": [[128, 64, 128], [0, 128, 0], [64, 0, 128]],
        "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "input_shape": [1, 3, 64, 96],
        "head": "labels", "precision": "fp32"}


def test_required_keys_come_from_the_model():
    assert SIDECAR_REQUIRED == ("model", "classes", "palette", "mean", "std", "input_shape", "head", "precision")
    assert all(Sidecar.model_fields[k].is_required() for k in SIDECAR_REQUIRED)


def test_engine_fields_pass_through_and_the_json_comes_back_as_written(tmp_path):
    engine = tmp_path / "m.engine"
    meta = {**META, "tensorrt_version": "10.3.0", "gpu": "NVIDIA H200", "compute_capability": "9.0",
            "batch_range": [1, 8], "dynamic": True, "max_batch": 8, "onnx_sha256": "ab" * 32,
            "model_config": {"num_classes": 3, "name": "tiny"}, "mean": [124, 116, 104]}
    write_sidecar(engine, meta)
    read = read_sidecar(engine, "rebuild it")
    assert read == {"sidecar_version": 1, **meta}
    assert read["mean"] == [124, 116, 104] and all(isinstance(x, int) for x in read["mean"])   # not coerced


def test_missing_keys_are_named_all_at_once():
    meta = {k: v for k, v in META.items() if k not in ("std", "precision")}
    with pytest.raises(InputError) as e:
        check_sidecar(meta, "m.onnx.json", "re-export it")
    assert str(e.value) == "m.onnx.json: missing std, precision; re-export it"


@pytest.mark.parametrize("key,value,ok", [
    ("max_batch", None, True), ("onnx_sha256", None, True), ("dla_core", None, True),   # may be null
    ("dynamic", None, False), ("input_name", None, False), ("model_config", None, False),  # absent, never null
    ("dla_core", 15, True), ("dla_core", 16, False), ("max_batch", True, False),
])
def test_which_keys_may_be_null_or_out_of_range(key, value, ok):
    meta = {**META, key: value}
    if ok:
        assert check_sidecar(meta, "w", "h") is meta
    else:
        with pytest.raises(InputError, match=f"^w: {key}: .*; h$"):
            check_sidecar(meta, "w", "h")


def test_a_broken_sidecar_file_is_a_sidecar_error(tmp_path):
    onnx_path = tmp_path / "m.onnx"
    write_sidecar(onnx_path, {**META, "head": "probs"})
    with pytest.raises(SidecarError, match=r"m\.onnx\.json: head: 'probs' is not one of labels, logits; fix"):
        read_sidecar(onnx_path, "fix it")


@pytest.mark.parametrize("key,value", [("palette", [[0, 0, 300]] * 11), ("std", [58.0, -1, 57.0]),
                                       ("mean", [1.0, 2.0]), ("class_names", ["road"] * 300)])
def test_model_config_fields_say_what_the_sidecar_says(key, value, tmp_path):
    """class_names/palette/mean/std have the sidecar's types: the same value, the same words."""
    data = yaml.safe_load((MODELS_DIR / "bisenetv1_r18-d32_camvid-360x480.yaml").read_text())
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump({**data, key: value}))
    with pytest.raises(ConfigError) as config_error:
        load_model_config(cfg)
    sidecar_key = "classes" if key == "class_names" else key
    with pytest.raises(InputError) as sidecar_error:
        check_sidecar({**META, sidecar_key: value}, "side", "hint")
    said = str(sidecar_error.value).removeprefix(f"side: {sidecar_key}: ").removesuffix("; hint")
    assert str(config_error.value) == f"{cfg}: {key}: {said}"


def test_model_config_names_every_missing_key(tmp_path):
    data = yaml.safe_load((MODELS_DIR / "bisenetv1_r18-d32_camvid-360x480.yaml").read_text())
    cfg = tmp_path / "m.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in data.items() if k not in ("crop_size", "std")}))
    with pytest.raises(ConfigError, match=r"m\.yaml: missing std, crop_size$"):
        load_model_config(cfg)


def test_every_zoo_config_exports_a_valid_sidecar_contract():
    """The zoo's classes, palette and normalization pass the sidecar's own check."""
    for path in sorted(MODELS_DIR.glob("*.yaml")):
        cfg = load_model_config(path)
        meta = {**META, "model": cfg.name, "classes": cfg.class_names, "palette": cfg.palette, "mean": cfg.mean,
                "std": cfg.std, "model_config": json.loads(json.dumps(cfg.to_dict()))}
        check_sidecar(meta, str(path), "fix the zoo config")
