"""Many cameras, one engine: run_camera.py with several sources as a real process, real clips,
real ONNX Runtime sessions (batch-1, static-batch and dynamic-batch exports), one HTTP port for
all. Every camera's accounting is checked exactly, row by row. No rate or latency is checked
here: the live cameras' rates and a stalled camera's queue time are in test_multicamera_live.py."""
from __future__ import annotations

import json
import re
import subprocess

import cv2
import numpy as np
import pytest

from app.latency import read_log
from app.run import main as run_main
from testkit.app_helpers import REPO, SAMPLE_VIDEO, read_labels, tiny_onnx
from testkit.app_process import App, check_camera_accounting, frames_in, run_camera

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
CAMVID_VAL = REPO.parent / "shared" / "data" / "camvid" / "val"
CAMVID_MODEL = REPO.parent / "shared" / "models" / "camvid_r18-d32_cpu.pth"
CAMVID_CONFIG = "bisenetv1_r18-d32_camvid-360x480"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Three different short clips cut from the street video (re-encoded: real H.264 files)."""
    folder = tmp_path_factory.mktemp("clips")
    out = []
    for start_s, frames in ((0.0, 20), (2.0, 25), (4.0, 30)):
        path = folder / f"clip_{frames}.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-ss", str(start_s), "-i", str(SAMPLE_VIDEO),
                        "-frames:v", str(frames), "-c:v", "libx264", "-preset", "ultrafast", str(path)],
                       check=True, timeout=60)
        assert frames_in(path) == frames
        out.append((path, frames))
    return out


def test_three_file_cameras_three_mp4s_with_all_frames_and_one_log(clips, tmp_path):
    """A batch-1 model serves three cameras one frame at a time, round-robin."""
    sources = [a for path, _ in clips for a in ("--source", path)]
    r = run_camera(*sources, "--model", tiny_onnx((64, 96)), "--output", tmp_path / "out_{camera}.mp4",
                   "--latency-log", tmp_path / "lat.csv", "--threads", 1, timeout_s=180)
    assert r.returncode == 0, r.stderr
    counts = check_camera_accounting(r.stderr, tmp_path / "lat.csv")
    rows = read_log(tmp_path / "lat.csv")
    for i, (_, frames) in enumerate(clips):
        assert counts[f"cam{i}"] == {"captured": frames, "written": frames, "dropped": 0, "reasons": {}}
        assert frames_in(tmp_path / f"out_cam{i}.mp4") == frames
    assert {r["camera"] for r in rows} == {"cam0", "cam1", "cam2"}
    assert {r["batch_size"] for r in rows} == {1}
    assert "all cameras: frames 75  written 75  dropped 0" in r.stderr


@pytest.fixture(scope="module")
def camvid_models(tmp_path_factory):
    """The trained CamVid R18 (real labels on the street frames) at 96x128: batch 1 and dynamic batch."""
    if not CAMVID_MODEL.is_file():
        pytest.skip(f"no trained CamVid model at {CAMVID_MODEL}")
    from engines.export import export_onnx
    from core.model_config import load_model_config

    cfg = load_model_config(CAMVID_CONFIG)
    folder = tmp_path_factory.mktemp("camvid")
    return {name: export_onnx(cfg, CAMVID_MODEL, folder / f"{name}.onnx", (96, 128), **kw)
            for name, kw in (("batch1", {}), ("dynamic", {"dynamic_batch": True}))}


@pytest.mark.skipif(not CAMVID_VAL.is_dir(), reason=f"no CamVid images at {CAMVID_VAL}")
def test_dynamic_batch_model_batches_three_cameras_with_the_labels_of_the_batch1_model(camvid_models, tmp_path):
    # Three file cameras of different kinds: a video, a folder of images, a glob of images.
    sources = ["--source", SAMPLE_VIDEO, "--source", CAMVID_VAL, "--source", f"{CAMVID_VAL}/0016E5_079*.jpg"]
    logs = {}
    for name, model in camvid_models.items():
        out = tmp_path / name
        r = run_camera(*sources, "--model", model, "--max-frames", 16, "--output", f"{out}_{{camera}}/",
                       "--save-labels", "--latency-log", tmp_path / f"{name}.csv", "--threads", 1,
                       timeout_s=180)
        assert r.returncode == 0, r.stderr
        check_camera_accounting(r.stderr, tmp_path / f"{name}.csv")
        logs[name] = read_log(tmp_path / f"{name}.csv")
    assert {r["batch_size"] for r in logs["batch1"]} == {1}
    sizes = [r["batch_size"] for r in logs["dynamic"]]
    assert np.mean(sizes) > 1.5, sizes
    for cam in ("cam0", "cam1", "cam2"):
        ref, got = read_labels(tmp_path / f"batch1_{cam}"), read_labels(tmp_path / f"dynamic_{cam}")
        assert len(ref) == len(got) == 16
        assert len({int(m.max()) for m in ref}) > 1 or len(np.unique(ref[0])) > 2   # real, varied labels
        for i, (a, b) in enumerate(zip(ref, got)):
            assert np.array_equal(a, b), f"{cam} frame {i}: batched labels differ from batch-1"


def test_static_batch_export_and_padded_batches(tmp_path, capsys):
    """`bisenet export --batch 2`: the graph takes 2 frames; 1 or 3 frames are padded / chunked
    and give what the batch-1 graph gives frame by frame."""
    from app.cli import main as cli
    from engines.onnx_engine import OnnxEngine

    ckpt = tmp_path / "c.pth"
    import torch

    from core.model_config import load_model_config
    from testkit.helpers import randomized_model
    cfg = load_model_config(CAMVID_CONFIG)
    torch.save({"state_dict": randomized_model(cfg).state_dict()}, ckpt)
    for name, extra in (("b1", []), ("b2", ["--batch", "2"]), ("dyn", ["--dynamic-batch", "--batch", "4"])):
        assert cli(["export", "--model", CAMVID_CONFIG, "--checkpoint", str(ckpt), "--size", "64x96",
                    "-o", str(tmp_path / f"{name}.onnx"), *extra]) == 0
    meta = json.loads((tmp_path / "b2.onnx.json").read_text())
    assert meta["input_shape"] == [2, 3, 64, 96] and meta["dynamic_batch"] is False
    meta = json.loads((tmp_path / "dyn.onnx.json").read_text())
    assert meta["dynamic_batch"] is True and meta["max_batch"] == 4
    b1, b2, dyn = (OnnxEngine(tmp_path / f"{n}.onnx", threads=1) for n in ("b1", "b2", "dyn"))
    assert (b1.batch_limit(3), b2.batch_limit(3), dyn.batch_limit(3), dyn.batch_limit(9)) == (1, 2, 3, 4)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3, 64, 96)).astype(np.float32)
    ref = np.concatenate([b1.infer(x[i:i + 1]) for i in range(3)])
    assert np.array_equal(b2.infer(x), ref) and np.array_equal(b2.infer(x[:1]), ref[:1])
    assert np.array_equal(dyn.infer(x), ref)
    assert "batch 2" in b2.describe() and "batch dynamic (max 4)" in dyn.describe()
    # OpenVINO runs the same batched graphs (its own kernels: near-equal, not bit-equal, labels).
    try:
        from engines.openvino_engine import OpenVinoEngine
        import openvino  # noqa: F401
    except ImportError:
        return
    for name in ("b2", "dyn"):
        ov = OpenVinoEngine(tmp_path / f"{name}.onnx", threads=1)
        assert ov.batch_limit(3) == (2 if name == "b2" else 3)
        got = ov.infer(x)
        assert got.shape == ref.shape and (got == ref).mean() > 0.99, name


def test_cameras_list_in_the_config_with_per_camera_flags_and_errors(clips, tmp_path, capsys):
    model = tiny_onnx((64, 96))
    (a, _), (b, _), _ = clips
    preset = tmp_path / "cams.yaml"
    preset.write_text(f"model: {model}\noutput: ['{tmp_path}/all_{{camera}}/']\nmax-frames: 3\n"
                      f"cameras:\n"
                      f"  - {{name: front, source: {a}}}\n"
                      f"  - {{name: back, source: {b}, max-frames: 2, output: ['{tmp_path}/own_back/']}}\n")
    assert run_main(["--config", str(preset), "--threads", "1"]) == 0
    assert len(list((tmp_path / "all_front").glob("*.png"))) == 3
    assert len(list((tmp_path / "own_back").glob("*.png"))) == 2 and not (tmp_path / "all_back").exists()
    err = capsys.readouterr().err
    assert "front: frames 3  written 3" in err and "back:  frames 2  written 2" in err
    bad = {
        "  - {name: x, source: a.mp4, alpha: 0.3}\n": "'alpha' is not a per-camera key",
        "  - {name: 'a b', source: a.mp4}\n": "camera name 'a b'",
        "  - {name: x}\n": "exactly one source",
        f"  - {{name: x, source: {a}}}\n  - {{name: x, source: {b}}}\n": "camera names must differ",
    }
    for cameras, message in bad.items():
        preset.write_text(f"model: {model}\noutput: ['null']\ncameras:\n{cameras}")
        assert run_main(["--config", str(preset)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    for output, message in ((tmp_path / "same.mp4", "put {camera} in it"),
                            ("http://127.0.0.1:8099/{camera}", "no {camera} in http:// outputs")):
        assert run_main(["--source", str(a), "--source", str(b), "--model", str(model), "--output", str(output)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines


def test_summary_and_latency_plot_per_camera(tmp_path):
    from app.frames import Frame
    from app.latency import LatencyRecorder
    from app.latency_plot import plot

    rec = LatencyRecorder(tmp_path / "lat.jsonl", start=0.0)
    for cam, n, e2e in (("cam0", 30, 20.0), ("cam1", 10, 200.0)):
        for i in range(n):
            f = Frame(i, i * 0.1, np.zeros((1, 1, 3), np.uint8), camera=cam, batch_size=2)
            f.timings = {"queue": 1.0, "preprocess": 2.0, "inference": 10.0, "overlay": 3.0, "sink": 4.0}
            rec.record_written(f, f.capture_ts + (e2e + i) / 1000)
    rec.record_dropped(10, 1.05, "queue_full", camera="cam1")
    rec.close()
    text = rec.format_summary({"cam0": 30, "cam1": 11})
    assert "cam0: frames 30  written 30  dropped 0  fps" in text
    assert "cam1: frames 11  written 10  dropped 1 (queue_full 1)" in text and "p50 204.5" in text
    assert "all cameras: frames 41  written 40  dropped 1 (queue_full 1)" in text and "batch 2.00" in text
    rows = read_log(tmp_path / "lat.jsonl")
    assert {(r["camera"], r["batch_size"]) for r in rows} == {("cam0", 2), ("cam1", 2), ("cam1", None)}
    img = cv2.imread(str(plot(tmp_path / "lat.jsonl", tmp_path / "p.png", use_opencv=True)))
    assert img.shape == (1600, 1200, 3)                   # one 800-pixel panel per camera
    for panel in (img[:800], img[800:]):                  # each with its own e2e histogram (black)
        assert ((np.abs(panel.astype(int) - (30, 30, 30)).sum(axis=2)) < 30).sum() > 500


def test_one_http_port_serves_every_camera_and_a_grid_page(clips, tmp_path):
    """--output http://127.0.0.1:PORT with three cameras: / is a grid naming them all, each
    camera has its own snapshot / stats / stream under /camera/NAME, /metrics counts per camera."""
    from prometheus_client.parser import text_string_to_metric_families

    from testkit.app_helpers import free_port
    from testkit.http_clients import request

    port = free_port()
    sources = [a for path, _ in clips for a in ("--source", path)]
    app = App(*sources, "--realtime", "--loop", "--model", tiny_onnx((64, 96), dynamic_batch=True),
              "--output", f"http://127.0.0.1:{port}", log=tmp_path / "lat.csv")
    try:
        app.wait_rows(3 * 10, timeout_s=60)
        status, headers, body = request(port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        page = body.decode()
        assert all(f'src="/camera/{c}/snapshot.jpg"' in page for c in ("cam0", "cam1", "cam2"))
        snaps = {}
        for cam in ("cam0", "cam1", "cam2"):
            status, headers, body = request(port, f"/camera/{cam}/snapshot.jpg")
            assert status == 200 and headers["content-type"] == "image/jpeg"
            snaps[cam] = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
            assert snaps[cam].shape == (360, 480, 3)
            status, _, body = request(port, f"/camera/{cam}/stats.json")
            assert status == 200 and json.loads(body)["frame"] >= 0
            status, _, _ = request(port, f"/camera/{cam}")
            assert status == 200
        assert not np.array_equal(snaps["cam0"], snaps["cam2"])   # each its own clip
        assert request(port, "/camera/cam9/snapshot.jpg")[0] == 404
        status, _, body = request(port, "/metrics")
        frames = {s.labels["camera"]: s.value for f in text_string_to_metric_families(body.decode())
                  if f.name == "bisenet_frames" for s in f.samples
                  if s.name == "bisenet_frames_total" and s.labels["outcome"] == "written"}
        assert set(frames) == {"cam0", "cam1", "cam2"} and min(frames.values()) > 0
    finally:
        app.signal()
    err = app.finish()
    assert app.proc.returncode == 0, err
    check_camera_accounting(err, tmp_path / "lat.csv")


def test_the_grid_page_shows_every_camera_in_headless_chromium(clips, tmp_path):
    """A real browser loads / and draws the three cameras side by side (mask mode: every video
    pixel is a palette color, easy to find in the screenshot)."""
    from testkit.app_helpers import free_port
    from testkit.http_clients import CHROMIUM, CHROMIUM_FLAGS

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    model = tiny_onnx((64, 96), dynamic_batch=True)
    palette = np.array(json.loads(open(str(model) + ".json").read())["palette"])[:, ::-1]   # BGR
    port = free_port()
    sources = [a for path, _ in clips for a in ("--source", path)]
    app = App(*sources, "--realtime", "--loop", "--model", model, "--mode", "mask",
              "--output", f"http://127.0.0.1:{port}", log=tmp_path / "lat.csv")

    def tiles_shown(page) -> list:
        """Three tiles in a row (auto-fill columns of at least 360 px): the share of each tile's
        video area, below its stats line, in palette colors."""
        shares = []
        for i in range(3):
            tile = page[60:260, i * 400 + 20:i * 400 + 360].reshape(-1, 1, 3).astype(int)
            shares.append(float((np.abs(tile - palette[None].astype(int)).sum(axis=2).min(axis=1) < 40).mean()))
        return shares

    try:
        app.wait_rows(3 * 10, timeout_s=60)
        # The page holds every camera's first frame, so Chromium's screenshot (taken once the
        # page has loaded) shows all tiles; the script then refreshes each from snapshot.jpg.
        shot = tmp_path / "grid.png"
        subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                        "--window-size=1200,700", "--timeout=10000", f"--screenshot={shot}",
                        f"http://127.0.0.1:{port}/"], capture_output=True, timeout=120)
        # ...and after a few (virtual) seconds every tile shows a frame its script fetched.
        dom = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-dom'}",
                              "--virtual-time-budget=4000", "--dump-dom", f"http://127.0.0.1:{port}/"],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        app.signal()
    err = app.finish()
    assert app.proc.returncode == 0, err
    assert dom.count('<img src="blob:') == 3 and len(re.findall(r"<span>[\d.]+ fps \| e2e", dom)) == 3, dom[-2000:]
    page = cv2.imread(str(shot))
    assert page is not None and page.shape[:2] == (700, 1200)
    shares = tiles_shown(page)
    assert min(shares) > 0.8, f"tiles with the overlay (share of palette pixels): {shares}"
