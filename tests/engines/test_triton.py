"""Triton Inference Server: a real `tritonserver` started by `bisenet serve-triton`
(nvidia-pytriton's binary, from .venv-triton: scripts/setup_triton.sh) serving the app over gRPC,
HTTP and shared memory, on 127.0.0.1 only. (The repository export is tests/engines/test_triton_repo.py;
serve-triton's refusals before any server starts, tests/engines/test_triton_serve_cli.py.)

One Triton server per machine at a time (its docs): the server tests hold a file lock.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from app.latency import read_log
from testkit.app_helpers import REPO, SAMPLE_VIDEO, free_port, read_labels, tiny_onnx
from testkit.app_process import bisenet, one_line_error

SIZE = (128, 256)
SERVER_ENV = REPO / ".venv-triton"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _pb2():
    pytest.importorskip("tritonclient.grpc", reason="no tritonclient: pip install 'tritonclient[grpc,http]'")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format, model_config_pb2


# ---------------------------------------------------------------- a real server
class Server:
    """`bisenet serve-triton` in its own process group (killed as a group, like a crash)."""

    def __init__(self, model: Path, log: Path):
        self.model, self.log = model, log
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.proc = None

    def start(self, timeout=180, *extra):
        self.shm_before = set(os.listdir("/dev/shm"))
        # TMPDIR: the repository serve-triton writes lands in pytest's folder even after a SIGKILL.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve-triton", "--onnx", str(self.model), "--http-port", str(self.http),
             "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics), "--max-queue-delay-us", "20000",
             *extra],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(self.log, "a"), start_new_session=True,
            env={**os.environ, "TMPDIR": str(self.log.parent)})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"serve-triton exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if "Triton serving" in self.log.read_text().split("--- start ---")[-1]:
                return
            time.sleep(0.2)
        pytest.fail(f"serve-triton not ready in {timeout} s: {self.log.read_text()[-2000:]}")

    def kill(self):
        """Like a crash; then remove the Python backend's shared memory the server left behind
        (new since start: the lock makes this the only Triton server of these tests)."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for name in set(os.listdir("/dev/shm")) - self.shm_before:
            if name.startswith("triton_python_backend_shm_region_"):
                Path("/dev/shm", name).unlink(missing_ok=True)

    def stop(self):
        """serve-triton's own clean stop (SIGTERM): the server exits, its folder is removed."""
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def url(self, protocol="grpc") -> str:
        return f"{protocol}://127.0.0.1:{self.grpc if protocol == 'grpc' else self.http}/bisenet"

    def counts(self) -> tuple:
        """Triton's own counters: (inferences, executions); their ratio is the mean batch."""
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=5).read().decode()
        values = {}
        for line in text.splitlines():
            for key in ("nv_inference_count", "nv_inference_exec_count"):
                if line.startswith(key + "{") and 'model="bisenet"' in line:
                    values[key] = float(line.rsplit(" ", 1)[1])
        return values.get("nv_inference_count", 0.0), values.get("nv_inference_exec_count", 0.0)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    _pb2()
    from engines.triton_serve import ServerEnv

    try:
        ServerEnv(SERVER_ENV)
    except RuntimeError as e:   # not set up, or a platform nvidia-pytriton does not support
        pytest.skip(str(e))
    lock = open(Path(tempfile.gettempdir()) / "bisenet-triton-tests.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)   # one Triton server per machine at a time
    srv = Server(tiny_onnx(SIZE), tmp_path_factory.mktemp("triton") / "server.log")
    try:
        srv.log.write_text("--- start ---\n")
        srv.start()
        yield srv
    finally:
        if srv.proc is not None and srv.proc.poll() is None:
            srv.stop()
        lock.close()


def run_app(model, out_dir: Path | None, *extra, max_frames=12, timeout=120):
    args = [sys.executable, "run_camera.py", "--source", str(SAMPLE_VIDEO), "--model", str(model),
            "--max-frames", str(max_frames), *map(str, extra)]
    args += ["--output", str(out_dir), "--save-labels"] if out_dir else ["--output", "null"]
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def local_labels(tmp_path_factory):
    if not SAMPLE_VIDEO.is_file():
        pytest.skip(f"sample clip missing: {SAMPLE_VIDEO}")
    out = tmp_path_factory.mktemp("local") / "out"
    done = run_app(tiny_onnx(SIZE), out)
    assert done.returncode == 0, done.stderr
    labels = read_labels(out)
    assert len(labels) == 12
    return labels


@pytest.mark.parametrize("protocol,shm", [("grpc", "none"), ("http", "none"), ("grpc", "system"),
                                          ("http", "system")])
def test_labels_identical_to_local_onnxruntime(server, local_labels, tmp_path, protocol, shm):
    out = tmp_path / "out"
    done = run_app(server.url(protocol), out, "--triton-shm", shm, "--triton-in-flight", "3")
    assert done.returncode == 0, done.stderr
    assert f"triton {server.url(protocol)}" in done.stderr and "written 12" in done.stderr.replace(":", ""), done.stderr
    labels = read_labels(out)
    assert len(labels) == len(local_labels)
    for i, (a, b) in enumerate(zip(local_labels, labels)):
        assert np.array_equal(a, b), f"frame {i} differs from local ONNX Runtime over {protocol}/{shm}"


def test_openvino_backend_matches_local_openvino(server, tmp_path):
    """serve-triton --backend openvino: the labels of the app's own OpenVINO engine, frame by frame.
    (A second server beside the module's one: separate ports, both under this module's lock.)"""
    pytest.importorskip("openvino", reason="openvino not installed in the app's venv")
    local = tmp_path / "local"
    done = run_app(tiny_onnx(SIZE), local, "--backend", "openvino", max_frames=6)
    assert done.returncode == 0, done.stderr
    srv = Server(tiny_onnx(SIZE), tmp_path / "server.log")
    srv.log.write_text("--- start ---\n")
    srv.start(180, "--backend", "openvino")
    try:
        import tritonclient.http as httpclient

        config = httpclient.InferenceServerClient(f"127.0.0.1:{srv.http}").get_model_config("bisenet")
        assert config["parameters"]["runtime"]["string_value"] == "openvino"
        remote = tmp_path / "remote"
        done = run_app(srv.url("grpc"), remote, max_frames=6)
        assert done.returncode == 0, done.stderr
    finally:
        srv.stop()
    a, b = read_labels(local), read_labels(remote)
    assert len(a) == len(b) == 6
    for i, (x, y) in enumerate(zip(a, b)):
        assert np.array_equal(x, y), f"frame {i} differs from local OpenVINO"


def test_engine_reads_metadata_and_refuses_wrong_shape(server):
    from engines.load import load_engine

    engine = load_engine(server.url("grpc"))
    try:
        side = json.loads(Path(str(tiny_onnx(SIZE)) + ".json").read_text())
        assert engine.info.class_names == side["classes"] and engine.info.input_size == SIZE
        assert engine.max_batch == 8 and not engine.info.dynamic
        with pytest.raises(ValueError, match="does not fit"):
            engine.infer(np.zeros((1, 3, 64, 64), np.float32))
        with pytest.raises(ValueError, match="at most 8"):
            engine.infer(np.zeros((9, 3, *SIZE), np.float32))
        from engines.onnx_engine import OnnxEngine

        local = OnnxEngine(tiny_onnx(SIZE))
        batch = np.random.default_rng(0).standard_normal((3, 3, *SIZE)).astype(np.float32)
        assert np.array_equal(engine.infer(batch), np.concatenate([local.infer(b[None]) for b in batch]))
    finally:
        engine.close()


def test_wrong_model_name_or_size_is_one_line(server, tmp_path):
    err = one_line_error(run_app(f"grpc://127.0.0.1:{server.grpc}/nosuch", None))
    assert "no ready model 'nosuch'" in err and "bisenet" in err
    err = one_line_error(run_app(f"http://127.0.0.1:{free_port()}/bisenet", None))
    assert "cannot reach Triton" in err
    err = one_line_error(run_app(f"grpc://127.0.0.1:{server.grpc}", None))
    assert "grpc://HOST:PORT/NAME" in err
    try:
        import tritonclient.utils.cuda_shared_memory  # noqa: F401
    except (ImportError, RuntimeError):   # no cuda-python (no GPU here): says what to install
        err = one_line_error(run_app(server.url(), None, "--triton-shm", "cuda"))
        assert "tritonclient[cuda]" in err
    # bisenet eval takes the classes from the server's parameters: a Cityscapes model on CamVid is refused.
    camvid = REPO.parent / "shared" / "data" / "camvid"
    if camvid.is_dir():
        err = one_line_error(bisenet("eval", "--model", server.url(), "--dataset", "camvid", "--data-root", camvid,
                                     "--limit", "1"))
        assert "predicts 19 classes" in err and "11" in err


def test_three_apps_are_batched_by_triton(server):
    before = server.counts()
    procs = [subprocess.Popen([sys.executable, "run_camera.py", "--source", str(SAMPLE_VIDEO), "--model",
                               server.url("grpc" if i % 2 == 0 else "http"), "--max-frames", "20",
                               "--triton-in-flight", "4", "--output", "null"],
                              cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i in range(3)]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    after = server.counts()
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 60, (before, after)
    assert inferences / executions > 1.0, f"mean server-side batch {inferences / executions:.2f}"


def test_three_cameras_share_one_request_per_batch(server, local_labels, tmp_path):
    """One app, three cameras: each batch of the cameras' frames goes to Triton as one request
    (mean batch_size > 1.5 in the log, fewer server executions than frames), every camera's
    labels equal local ONNX Runtime's frame by frame, and its accounting is exact."""
    from testkit.app_process import check_camera_accounting

    before = server.counts()
    log = tmp_path / "lat.jsonl"
    done = subprocess.run([sys.executable, "run_camera.py", *["--source", str(SAMPLE_VIDEO)] * 3,
                           "--model", server.url("grpc"), "--triton-shm", "system", "--max-frames", "12",
                           "--output", str(tmp_path / "out_{camera}"), "--save-labels", "--latency-log", str(log)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    check_camera_accounting(done.stderr, log)
    rows = read_log(log)
    assert len(rows) == 36 and sum(r["batch_size"] for r in rows) / len(rows) > 1.5, rows
    for cam in ("cam0", "cam1", "cam2"):
        labels = read_labels(tmp_path / f"out_{cam}")
        assert len(labels) == len(local_labels), cam
        for i, (a, b) in enumerate(zip(local_labels, labels)):
            assert np.array_equal(a, b), f"{cam} frame {i} differs from local ONNX Runtime"
    after = server.counts()
    assert after[0] - before[0] == 36 and after[1] - before[1] < 36, (before, after)


@pytest.mark.parametrize("protocol,shm", [("grpc", "system"), ("http", "none")])
def test_server_killed_and_restarted_mid_run(server, tmp_path, protocol, shm):
    """The app keeps running through a crash of the server: frames in the outage are dropped
    with reason server_down, the stream resumes, every frame id is accounted for once."""
    log = tmp_path / "lat.jsonl"
    app = subprocess.Popen([sys.executable, "run_camera.py", "--source", str(SAMPLE_VIDEO), "--model",
                            server.url(protocol), "--triton-shm", shm, "--realtime", "--loop",
                            "--output", "null", "--latency-log", str(log)],
                           cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(iter(app.stderr.readline, "")), daemon=True)
    reader.start()

    def wait_for(text, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in ln for ln in lines):
                return
            assert app.poll() is None, "".join(lines)
            time.sleep(0.1)
        pytest.fail(f"no {text!r} in the app's log within {timeout} s: {''.join(lines)}")

    try:
        wait_for("outputs:", 60)
        time.sleep(1.5)                       # frames flow
        server.kill()
        wait_for("is down", 20)
        time.sleep(1.0)
        server.log.write_text(server.log.read_text() + "--- start ---\n")
        server.start()
        wait_for("is back", 60)
        time.sleep(1.5)                       # frames flow again
        app.send_signal(signal.SIGINT)
        app.wait(timeout=60)
    finally:
        if app.poll() is None:
            app.kill()
    reader.join(5)
    text = "".join(lines)
    assert app.returncode == 0, text
    rows = read_log(log)
    ids = [r["frame"] for r in rows]
    assert sorted(ids) == list(range(len(ids))), "every captured frame: exactly one row"
    reasons = [r["reason"] for r in rows if r["dropped"]]
    assert reasons.count("server_down") >= 1 and set(reasons) <= {"server_down", "queue_full", "shutdown"}, reasons
    down = [i for i, r in enumerate(rows) if r["reason"] == "server_down"]
    written_after = [r for r in rows[down[-1]:] if not r["dropped"]]
    written_before = [r for r in rows[:down[0]] if not r["dropped"]]
    assert written_before and written_after, "frames written before the outage and after it"
    assert "outages 1" in text, text


# ---------------------------------------------------------------- a fixed batch-N model (max_batch_size 0)
@pytest.fixture(scope="module")
def batch2_onnx(tmp_path_factory) -> Path:
    """A tiny random-weight export with a fixed batch of 2 (`bisenet export --batch 2`)."""
    from core.model_config import load_model_config
    from engines.export import export_onnx
    from testkit.app_helpers import MODEL_NAME

    out = tmp_path_factory.mktemp("batch2") / "r18_batch2.onnx"
    return export_onnx(load_model_config(MODEL_NAME), None, out, SIZE, random_init=True, batch=2)


@pytest.fixture(scope="module")
def fixed_server(server, batch2_onnx, tmp_path_factory):
    """serve-triton --max-batch 0: the batch-2 export with its own dims [2, 3, H, W], no Triton
    batching, as Triton's onnxruntime backend serves a `triton-repo` of it. (Beside the module's
    server, under its lock, like the OpenVINO test's.)"""
    srv = Server(batch2_onnx, tmp_path_factory.mktemp("triton_fixed") / "server.log")
    srv.log.write_text("--- start ---\n")
    srv.start(180, "--max-batch", "0")
    try:
        yield srv
    finally:
        srv.stop()


def test_serve_triton_fixed_batch_config(fixed_server):
    import tritonclient.http as httpclient

    config = httpclient.InferenceServerClient(f"127.0.0.1:{fixed_server.http}").get_model_config("bisenet")
    assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config, config
    assert [int(d) for d in config["input"][0]["dims"]] == [2, 3, *SIZE]


@pytest.mark.parametrize("shm", ["none", "system"])
def test_fixed_batch_model_pads_like_local_engines(fixed_server, batch2_onnx, shm):
    """1 frame (padded to 2), 2 frames, and 5 frames (infer: requests of 2, the last padded):
    the labels of the local ONNX Runtime engine on the same export and frames."""
    from engines.onnx_engine import OnnxEngine
    from engines.triton_engine import TritonEngine

    local = OnnxEngine(batch2_onnx)
    engine = TritonEngine(fixed_server.url("grpc"), shm=shm)
    try:
        assert engine.max_batch == 0 and engine.fixed_batch == 2
        assert [engine.batch_limit(c) for c in (1, 2, 3)] == [1, 2, 2]
        frames = np.random.default_rng(1).standard_normal((5, 3, *SIZE)).astype(np.float32)
        for n in (1, 2, 5):
            got = engine.infer(frames[:n])
            assert got.shape == (n, *SIZE), (n, got.shape)
            assert np.array_equal(got, local.infer(frames[:n])), f"{n} frame(s) differ from local ONNX Runtime"
        one = engine.submit(frames[:1]).result()   # the pipeline's path: one request, the frames sent
        assert np.array_equal(engine.labels_of(one), local.infer(frames[:1]))
        with pytest.raises(ValueError, match="fixed batch of 2"):
            engine.submit(frames[:3])
    finally:
        engine.close()
        local.close()


def test_fixed_batch_model_run_camera(fixed_server, batch2_onnx, tmp_path):
    """One camera through the fixed batch-2 model: every frame written (none refused), the labels
    of local ONNX Runtime on the same export, frame by frame."""
    local, remote = tmp_path / "local", tmp_path / "remote"
    done = run_app(batch2_onnx, local)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "lat.jsonl"
    done = run_app(fixed_server.url("grpc"), remote, "--latency-log", log)
    assert done.returncode == 0, done.stderr
    assert "written 12" in done.stderr.replace(":", ""), done.stderr
    rows = read_log(log)
    assert len(rows) == 12 and not any(r["dropped"] for r in rows), rows
    a, b = read_labels(local), read_labels(remote)
    assert len(a) == len(b) == 12
    for i, (x, y) in enumerate(zip(a, b)):
        assert np.array_equal(x, y), f"frame {i} differs from local ONNX Runtime"
