"""The Python API (bisenet_edge) on real parts: the trained CamVid model exported to a real
ONNX file, the street clip, real ONNX Runtime sessions, the app's own pipeline threads. The
example of docs/api.md runs as it is and gives the labels run_camera.py --save-labels writes."""
from __future__ import annotations

import re
import subprocess
import threading

import cv2
import numpy as np
import pytest

import bisenet_edge
from core.errors import InputError
from testkit.app_helpers import REPO, SAMPLE_VIDEO, read_labels, tiny_onnx
from testkit.app_process import run_camera

CAMVID_MODEL = REPO.parent / "shared" / "models" / "camvid_r18-d32_cpu.pth"
CAMVID_CONFIG = "bisenetv1_r18-d32_camvid-360x480"
SIZE_HW = (96, 128)   # small: the test runs on 2 shared cores

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    """The trained CamVid model at 96x128: batch 1 and dynamic batch."""
    if not CAMVID_MODEL.is_file():
        pytest.skip(f"no trained CamVid model at {CAMVID_MODEL}")
    from core.model_config import load_model_config
    from engines.export import export_onnx

    folder = tmp_path_factory.mktemp("camvid")
    cfg = load_model_config(CAMVID_CONFIG)
    return {"single": export_onnx(cfg, CAMVID_MODEL, folder / "camvid.onnx", SIZE_HW),
            "dynbatch": export_onnx(cfg, CAMVID_MODEL, folder / "camvid_dyn.onnx", SIZE_HW, dynamic_batch=True)}


def example_code(doc: str = "docs/api.md") -> str | None:
    """The first python block of `doc` (README.md: of its "## Python API" section), None without one."""
    text = (REPO / doc).read_text()
    if doc == "README.md":
        section = re.search(r"^## Python API\n(.*?)(?=^## |\Z)", text, re.S | re.M)
        text = section.group(1) if section else ""
    found = re.search(r"```python\n(.*?)```", text, re.S)
    return found.group(1) if found else None


def test_the_readme_shows_the_tested_example():
    """README's "Python API" section, once it has one, shows the example tested below."""
    readme = example_code("README.md")
    if readme is None:
        pytest.skip("README.md has no Python API section with a python block yet")
    assert readme == example_code()


def test_docs_example_gives_the_labels_run_camera_saves(camvid, tmp_path, monkeypatch, capsys):
    # The example's paths (README's CamVid export, the street clip), here this test's files.
    code = example_code().replace('"artifacts/camvid.onnx"', repr(str(camvid["single"])))
    code = code.replace('"../shared/data/samples/camvid_0016E5_15fps.mp4"', repr(str(SAMPLE_VIDEO)))
    assert str(SAMPLE_VIDEO) in code and str(camvid["single"]) in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    got = namespace["labels"]
    assert len(got) == 20
    assert "cam0 19 road" in capsys.readouterr().out

    r = run_camera("--source", SAMPLE_VIDEO, "--model", camvid["single"], "--output", tmp_path / "out",
                   "--save-labels", "--max-frames", 20, "--threads", 1, timeout_s=300)
    assert r.returncode == 0, r.stderr
    saved = read_labels(tmp_path / "out")
    assert len(saved) == 20
    for i, (ours, theirs) in enumerate(zip(got, saved)):
        assert ours.shape == SIZE_HW and ours.dtype == np.int32
        assert np.array_equal(ours, theirs), f"frame {i}"


def test_model_call_matches_the_stream_and_upsamples(camvid):
    with bisenet_edge.load_model(camvid["single"], threads=1) as model:
        assert model.classes[:3] == ["sky", "building", "pole"] and model.input_size == SIZE_HW
        assert model.palette.shape == (len(model.classes), 3)
        results = list(bisenet_edge.stream(SAMPLE_VIDEO, model, max_frames=3))
        for r in results:
            assert np.array_equal(model(r.image), r.labels)
            full = model.labels(r.image, size="source")
            assert full.shape == r.image.shape[:2] and np.array_equal(full, r.source_labels())
        with pytest.raises(InputError, match="labels only; export with --head logits"):
            model.logits(results[0].image)
        with pytest.raises(InputError, match="uint8 BGR"):
            model(results[0].image.astype(np.float32))


def test_logits_where_the_model_has_them():
    model = bisenet_edge.load_model(tiny_onnx((64, 96), head="logits"), threads=1)
    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    logits = model.logits(frame)
    assert logits.shape == (len(model.classes), 64, 96)
    assert np.array_equal(np.argmax(logits, axis=0), model(frame))
    model.close()


def test_two_cameras_share_one_engine_batched(camvid, tmp_path):
    short = tmp_path / "short.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-ss", "2", "-i", str(SAMPLE_VIDEO), "-frames:v", "12",
                    "-c:v", "libx264", "-preset", "ultrafast", str(short)], check=True, timeout=60)
    model = bisenet_edge.load_model(camvid["dynbatch"], threads=1)
    by_camera: dict = {}
    for r in bisenet_edge.stream({"front": SAMPLE_VIDEO, "back": short}, model, max_frames=15):
        by_camera.setdefault(r.camera, []).append(r)
    assert {name: [r.frame_id for r in rs] for name, rs in by_camera.items()} == \
        {"front": list(range(15)), "back": list(range(12))}
    assert max(r.batch_size for rs in by_camera.values() for r in rs) == 2   # one inference served both
    for rs in by_camera.values():
        for r in rs[:3]:   # the batched labels are the frame's own (batched and single inference agree)
            agree = (model(r.image) == r.labels).mean()
            assert agree > 0.999, f"{r.camera} {r.frame_id}: {agree}"
    model.close()


def test_breaking_out_early_leaves_no_threads(camvid):
    before = set(threading.enumerate())
    stream = bisenet_edge.stream([SAMPLE_VIDEO, SAMPLE_VIDEO], str(camvid["single"]))   # loaded and closed by it
    for n, _ in enumerate(stream):
        if n == 4:
            break
    stream.close()   # what a for loop's end does when the generator is collected, made explicit
    left = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert left == [], left


def test_coverage_and_events_with_zones(camvid):
    zones = [{"name": "all", "polygon": [[0, 0], [1, 0], [1, 1], [0, 1]], "classes": ["road", "car"]}]
    results = list(bisenet_edge.stream(SAMPLE_VIDEO, camvid["single"], max_frames=4, zones=zones))
    assert len(results) == 4
    for r in results:
        assert set(r.coverage) == {"all"} and set(r.coverage["all"]) == {"road", "car"}
        road = (r.labels == 3).mean()   # CamVid class 3 is road; the whole frame is the zone
        assert abs(r.coverage["all"]["road"] - road) < 1e-6
        assert r.events == []
    plain = next(iter(bisenet_edge.stream(SAMPLE_VIDEO, camvid["single"], max_frames=1)))
    assert plain.coverage is None and plain.events == []


@pytest.mark.parametrize("kwargs, message", [
    ({"output": ["x.mp4"]}, "stream\\(\\) takes no output"),
    ({"mode": "blend"}, "--mode"),
    ({"max_frame": 3}, "unknown option 'max_frame'"),
    ({"max_frames": 0}, "--max-frames"),
    ({"zones": [{"name": "a", "polygon": [[0, 0], [1, 0], [1, 1]], "classes": ["cars"]}]}, "cars"),
])
def test_bad_options_are_one_line_input_errors(camvid, kwargs, message):
    with pytest.raises(InputError, match=message) as e:
        list(bisenet_edge.stream(SAMPLE_VIDEO, camvid["single"], **kwargs))   # zones: checked once the model is loaded
    assert "\n" not in str(e.value)


def test_a_bad_model_is_the_clis_one_line_error(tmp_path):
    with pytest.raises(InputError, match="checkpoint goes in --checkpoint"):
        bisenet_edge.load_model(tmp_path / "x.pth")


def test_bad_options_fail_at_the_call_not_at_the_first_frame():
    with pytest.raises(InputError, match="unknown option 'max_frame'"):
        bisenet_edge.stream(SAMPLE_VIDEO, "not-loaded-yet.onnx", max_frame=3)
