"""Config files read with bounds (core/validate.py load_yaml) and the one name rule
(core/names.py): every refusal is one line that says what to fix, never a traceback."""
from __future__ import annotations

import pytest

from core.errors import InputError
from core.validate import load_yaml


def refused(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as e:
        load_yaml(path)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_deep_nesting_is_one_line_not_a_recursion_error(tmp_path):
    assert "nested more than 32 deep" in refused(tmp_path, "zones: " + "[" * 400 + "]" * 400 + "\n")
    assert "line 1" in refused(tmp_path, "a: " + "{b: " * 100 + "1" + "}" * 100 + "\n")


def test_a_huge_file_is_refused_before_it_is_parsed_naming_the_limit(tmp_path):
    message = refused(tmp_path, "# comment\n" * (4 * 1024 * 1024 // 10 + 1))
    assert "at most 4 MiB" in message


def test_duplicate_keys_are_refused_naming_the_key_and_line(tmp_path):
    message = refused(tmp_path, "model: a.onnx\nmqtt-user: x\nsource: 0\nmqtt-user: y\n")
    assert "line 4" in message and "'mqtt-user' is given twice" in message
    assert "given twice" in refused(tmp_path, "cameras:\n  - {name: a, name: b}\n")


def test_a_huge_value_is_refused(tmp_path):
    assert "a value of 100000 characters (at most 8192)" in refused(tmp_path, "mqtt-user: " + "x" * 100_000 + "\n")


def test_ordinary_configs_with_anchors_and_merge_keys_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\nlist: [[[1, 2]]]\n")
    assert load_yaml(path) == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2}, "list": [[[1, 2]]]}


@pytest.mark.parametrize("name", ["cam0\n", "a/b", "a+b", "a#", "a b", "", "-a", "a\0", "x" * 65, "é"])
def test_names_that_would_break_files_urls_or_topics_are_refused(name):
    from app.camera import check_name
    from core.names import name_ok

    assert not name_ok(name)
    with pytest.raises(InputError, match="camera name"):
        check_name(name)


def test_any_class_name_becomes_one_plain_topic_level():
    from core.names import topic_level

    assert topic_level("car") == "car"
    assert topic_level("traffic light") == "traffic_light"
    assert [topic_level(n) for n in ("a/b", "a+b", "car#", "x\ny", "")] == ["a_b", "a_b", "car_", "x_y", "_"]
