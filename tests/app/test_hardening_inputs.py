"""No password of a camera URL in any output, and configs that cannot blow up (YAML aliases
bounded in their expanded size, values in messages cut short). run_camera.py as a real process;
each refusal is exit 2 and one stderr line."""
from __future__ import annotations

import pytest

from core.errors import first_line
from core.redact import redact_url, shown
from testkit.app_helpers import tiny_onnx
from testkit.app_process import run_camera

PW = "S3cretPW"


def test_redact_url_hides_every_password_and_keeps_the_rest():
    assert redact_url(f"cannot open rtsp://admin:{PW}@127.0.0.1:1/x") == "cannot open rtsp://admin:***@127.0.0.1:1/x"
    assert redact_url(f"http://u:p@ss{PW}@h:8/a and rtsp://h/x") == "http://u:***@h:8/a and rtsp://h/x"
    assert redact_url("rtsp://user@h/x?a=b:c@d") == "rtsp://user@h/x?a=b:c@d"   # no password: unchanged
    assert PW not in first_line(ValueError(f"x rtsp://a:{PW}@h/x\nmore"))
    # Secrets in the query string (camera ?user=&password=, webhook and signed-URL tokens).
    assert redact_url(f"rtsp://h/ch1?user=admin&password={PW}&subtype=0") == \
        "rtsp://h/ch1?user=admin&password=***&subtype=0"
    assert redact_url(f"POST http://h:9/hook?Token={PW} failed") == "POST http://h:9/hook?Token=*** failed"
    assert redact_url("http://h/x?keyframe=1&monkey=2") == "http://h/x?keyframe=1&monkey=2"   # not a secret name


def test_shown_is_bounded_for_huge_nested_values():
    huge = [[list(range(10_000))] * 1000] * 1000   # one list object, 10 billion items when expanded
    assert len(shown(huge)) <= 200
    assert len(shown("x" * 10_000_000)) <= 200


@pytest.mark.parametrize("url", [f"rtsp://admin:{PW}@127.0.0.1:1/x", f"http://user:{PW}@127.0.0.1:1/cam.mjpg",
                                 f"rtsp://127.0.0.1:1/x?user=admin&password={PW}"])
def test_a_camera_password_is_never_printed(url, tmp_path):
    log = tmp_path / "lat.csv"
    r = run_camera("--source", url, "--model", tiny_onnx(), "--output", tmp_path / "o.mp4",
                   "--latency-log", log, "--source-timeout", "2", timeout_s=120)
    assert PW not in r.stdout + r.stderr
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert ":***@127.0.0.1" in r.stderr or "password=***" in r.stderr
    assert not log.exists() and not (tmp_path / "o.mp4").exists()


def _config(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path, path.read_bytes()


@pytest.mark.parametrize("key", ["allowed-hosts", "output", "source"])
def test_a_yaml_alias_bomb_is_one_line_exit_2(key, tmp_path):
    bomb = "".join(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}" if i else '"lol"'] * 9) + "]\n" for i in range(10))
    path, before = _config(tmp_path, bomb.replace("l9:", f"{key}:"))
    r = run_camera("--config", path, "--source", "x.mp4", "--model", "m.onnx", timeout_s=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr[-2000:]
    assert "more than 100000 values (aliases, *name, counted expanded)" in r.stderr and " line " in r.stderr
    assert path.read_bytes() == before


def test_anchors_that_yaml_dump_writes_still_load(tmp_path):
    import yaml

    from core.validate import load_yaml

    shared = [0, 0, 300]
    path, _ = _config(tmp_path, yaml.safe_dump({"palette": [shared] * 11}))
    assert "&" in path.read_text() and load_yaml(path) == {"palette": [shared] * 11}


def test_a_huge_value_is_quoted_cut_short(tmp_path):
    path, before = _config(tmp_path, "allowed-hosts: [" + ", ".join(["[1, 2, 3]"] * 20_000) + "]\n")
    r = run_camera("--config", path, "--source", "x.mp4", "--model", "m.onnx", timeout_s=60)
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1 and len(r.stderr) < 1100, r.stderr[:2000]
    assert "allowed-hosts" in r.stderr
    assert path.read_bytes() == before


def test_an_rtsp_push_password_is_never_printed(tmp_path):
    from testkit.app_helpers import SAMPLE_VIDEO

    r = run_camera("--source", SAMPLE_VIDEO, "--max-frames", "5", "--model", tiny_onnx(),
                   "--output", f"rtsp://pub:{PW}@127.0.0.1:1/live", timeout_s=120)   # nothing listens there
    assert PW not in r.stdout + r.stderr
    assert "rtsp push rtsp://pub:***@127.0.0.1:1/live" in r.stderr
