"""The session builder (app/session.py) on real parts: the street clip, a real ONNX Runtime
session of a small random-weight model, the app's own threads. Cameras join, leave and are
rebuilt while another runs; the Python API and run_camera.py give the same labels and the
same accounting for the same settings, a camera down at start included."""
from __future__ import annotations

import numpy as np
import pytest

from app.latency import read_log
from app.session import Session
from app.settings import build
from engines.onnx_engine import OnnxEngine
from testkit.app_helpers import REPO, SAMPLE_VIDEO, free_port, read_labels, tiny_onnx
from testkit.app_process import App, camera_counts

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
CAMVID_MODEL = REPO.parent / "shared" / "models" / "camvid_r18-d32_cpu.pth"


@pytest.fixture(scope="module")
def camvid(tmp_path_factory):
    """The trained CamVid model at 96x128 (small: 2 shared cores): labels worth comparing."""
    if not CAMVID_MODEL.is_file():
        pytest.skip(f"no trained CamVid model at {CAMVID_MODEL}")
    from core.model_config import load_model_config
    from engines.export import export_onnx

    path = tmp_path_factory.mktemp("camvid") / "camvid.onnx"
    return export_onnx(load_model_config("bisenetv1_r18-d32_camvid-360x480"), CAMVID_MODEL, path, (96, 128))


@pytest.fixture(scope="module")
def engine():
    eng = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    yield eng
    eng.close()


def counts_by_camera(rows) -> dict:
    out = {}
    for r in rows:
        c = out.setdefault(r["camera"], {"frames": [], "dropped": 0})
        c["frames"].append(r["frame"])
        c["dropped"] += bool(r["dropped"])
    return {name: {"frames": sorted(c["frames"]), "dropped": c["dropped"]} for name, c in out.items()}


def test_a_camera_joins_and_leaves_while_the_other_keeps_every_frame(engine, tmp_path):
    settings = build({"source": [str(SAMPLE_VIDEO)], "max_frames": 40, "output": ["null"],
                      "latency_log": str(tmp_path / "lat.csv")})
    order = []
    with Session(settings, engine, log=lambda msg: None) as session:
        for r in session.frames():
            order.append((r.camera, r.frame_id))
            side = [f for c, f in order if c == "side"]
            if (r.camera, r.frame_id) == ("cam0", 3):
                session.add_camera({"name": "side", "source": str(SAMPLE_VIDEO), "loop": True, "output": ["null"]})
            elif r.camera == "side" and len(side) == 5:
                session.remove_camera("side")   # from inside the loop: its frames in flight still come
                removed_at = len(order)
            elif (r.camera, r.frame_id) == ("cam0", 30):
                session.add_camera({"name": "side", "source": str(SAMPLE_VIDEO), "max_frames": 3, "output": ["null"]})
        code = session.code
    assert code == 0 and session.failures == []
    cam0 = [f for c, f in order if c == "cam0"]
    side = [f for c, f in order if c == "side"]
    assert cam0 == list(range(40))                       # every frame of the camera that stayed, in order
    assert side == list(range(len(side))) and len(side) >= 8   # the camera that came back goes on with its ids
    first_side = order.index(("side", 0))
    assert any(c == "cam0" for c, _ in order[first_side:removed_at])   # both ran at once
    assert any(c == "cam0" for c, _ in order[removed_at:order.index(("side", len(side) - 3))])   # cam0 alone
    rows = read_log(tmp_path / "lat.csv")
    counts = counts_by_camera(rows)
    assert counts == {"cam0": {"frames": list(range(40)), "dropped": 0},
                      "side": {"frames": list(range(len(side))), "dropped": 0}}
    assert session.recorder.summary(session.pipeline.captured_by_camera())["unaccounted"] == 0


def test_rebuilding_the_only_camera_keeps_the_run_going(engine):
    settings = build({"source": [str(SAMPLE_VIDEO)], "loop": True, "max_frames": 1000, "output": ["null"]})
    ids = []
    with Session(settings, engine, log=lambda msg: None) as session:
        for r in session.frames():
            ids.append(r.frame_id)
            if r.frame_id == 2:
                session.rebuild_camera({"name": "cam0", "source": str(SAMPLE_VIDEO), "max_frames": 4,
                                        "output": ["null"]})
    assert session.code == 0
    assert ids == list(range(len(ids))) and len(ids) >= 7   # the old camera's frames, then 4 more
    assert sum(session.recorder.dropped.values()) == 0 and session.recorder.written == len(ids)


def test_the_api_and_the_cli_give_the_same_labels_and_accounting_with_a_camera_down_at_start(camvid, tmp_path):
    """A file camera beside an RTSP camera whose server is not up (a closed port on 127.0.0.1):
    both `bisenet_edge.stream` and run_camera.py carry on with the file; the down camera is an
    outage with no frames. The frames written, the drops and every label map agree."""
    import bisenet_edge

    frames = 8
    dead = f"rtsp://127.0.0.1:{free_port()}/cam"
    model = camvid
    sources = {"street": str(SAMPLE_VIDEO), "door": dead}

    api_log = tmp_path / "api.csv"
    got = []
    with bisenet_edge.load_model(model, threads=1) as loaded:
        for r in bisenet_edge.stream(sources, loaded, max_frames=frames, source_timeout=0.5, latency_log=str(api_log)):
            got.append(r)
            if r.camera == "street" and r.frame_id == frames - 1:
                break   # the down camera never ends by itself
    config = tmp_path / "two.yaml"
    config.write_text(f"cameras:\n  - {{name: street, source: '{SAMPLE_VIDEO}'}}\n  - {{name: door, source: '{dead}'}}\n")
    cli_log = tmp_path / "cli.csv"
    app = App("--config", config, "--model", model, "--max-frames", frames, "--source-timeout", 0.5,
              "--output", tmp_path / "out_{camera}", "--save-labels", log=cli_log)
    try:
        app.wait_rows(frames, timeout_s=90)
    finally:
        app.signal()   # the user stops it: the file camera has written all its frames
        err = app.finish()
    assert app.proc.returncode == 0, err
    assert "door: source rtsp://127.0.0.1" in err and "lost (down at start" in err
    assert camera_counts(err)["street"] == {"captured": frames, "written": frames, "dropped": 0, "reasons": {}}

    api, cli = counts_by_camera(read_log(api_log)), counts_by_camera(read_log(cli_log))
    assert api == cli == {"street": {"frames": list(range(frames)), "dropped": 0}}
    assert [r.frame_id for r in got] == list(range(frames)) and {r.camera for r in got} == {"street"}
    saved = read_labels(tmp_path / "out_street")
    assert len(saved) == frames and len(np.unique(saved[0])) > 3   # a real scene: several classes
    for r, theirs in zip(got, saved):
        assert np.array_equal(r.labels, theirs), f"frame {r.frame_id}"


def test_a_single_camera_down_at_start_is_the_same_one_line_error_in_the_api_and_the_cli(tmp_path):
    """One camera: nothing else could run, so a live source that is down at start is a start
    error (exit 2 for run_camera.py, an InputError-like BisenetError for stream()), one line."""
    import bisenet_edge
    from core.errors import BisenetError
    from testkit.app_process import run_camera

    dead = f"rtsp://127.0.0.1:{free_port()}/cam"
    model = tiny_onnx((64, 96))
    with pytest.raises(BisenetError) as api:
        list(bisenet_edge.stream(dead, str(model), source_timeout=0.5))
    r = run_camera("--source", dead, "--model", model, "--source-timeout", 0.5, "--output", "null")
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line == f"run_camera.py: error: {api.value}" and "\n" not in str(api.value)
