"""No pixel work that no output needs: with `--output null` and scene analytics the run draws
no overlay at all (the summary and /metrics say so) and its coverage is that of a run that
draws; an http:// output draws only while a real MJPEG viewer is connected; a video file still
gets every frame drawn. All on the street clip with a small random-weight model."""
from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time

import cv2
import numpy as np
import pytest

from app.camera import Camera
from app.frames import Reader, Sink
from app.pipeline import FusedInference, Pipeline
from app.session import Session
from app.settings import CameraSettings, build
from app.sinks import NullSink
from app.sources import open_source
from core.overlay import palette_bgr, render_overlay
from core.preprocess import preprocess
from engines.fused_chain import LABELS, FusedEngine
from engines.onnx_engine import OnnxEngine
from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx, wait_for
from testkit.app_process import frames_in, run_camera
from testkit.http_clients import Viewer, metric_values, request

pytestmark = pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
FRAMES = 12
ZONES = ("zones:\n  - name: all\n    polygon: [[0, 0], [1, 0], [1, 1], [0, 1]]\n    classes: [road, sky]\n"
         "  - name: low\n    polygon: [[0, 0.5], [1, 0.5], [1, 1], [0, 1]]\n    classes: [road]\n")


def overlays_line(stderr: str) -> tuple[int, int]:
    m = re.search(r"overlays drawn (\d+)  skipped (\d+)", stderr)
    assert m, f"no overlays line in: {stderr[-2000:]}"
    return int(m.group(1)), int(m.group(2))


def run_with_zones(tmp_path, output: str):
    zones = tmp_path / "zones.yaml"
    zones.write_text(ZONES)
    log = tmp_path / f"cov-{output.replace('/', '_')}.jsonl"
    result = run_camera("--config", zones, "--source", SAMPLE_VIDEO, "--model", tiny_onnx(), "--output", output,
                        "--max-frames", FRAMES, "--coverage-log", log, "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"frames {FRAMES}  written {FRAMES}" in result.stderr, result.stderr[-2000:]
    return result.stderr, [json.loads(line) for line in log.read_text().splitlines()]


def test_overlay_counts_0_with_null_output_and_the_coverage_of_a_run_that_draws(tmp_path):
    null_err, null_cov = run_with_zones(tmp_path, "null")
    assert overlays_line(null_err) == (0, FRAMES)
    video = tmp_path / "out.mp4"
    mp4_err, mp4_cov = run_with_zones(tmp_path, str(video))
    assert overlays_line(mp4_err) == (FRAMES, 0)
    assert frames_in(video) == FRAMES              # every written frame drawn into the file
    assert len(null_cov) == FRAMES and [r["coverage"] for r in null_cov] == [r["coverage"] for r in mp4_cov]
    assert set(null_cov[0]["coverage"]) == {"all", "low"}


def overlays(port: int) -> tuple[float, float, float]:
    """(drawn, skipped, viewers) of cam0 from the run's /metrics."""
    status, _, body = request(port, "/metrics")
    assert status == 200
    text = body.decode()
    cam = (("camera", "cam0"),)
    return (metric_values(text, "bisenet_overlays_drawn_total").get(cam, 0.0),
            metric_values(text, "bisenet_overlays_skipped_total").get(cam, 0.0),
            metric_values(text, "bisenet_http_viewers").get((), 0.0))


def test_an_http_output_draws_only_while_a_viewer_watches(free_port):
    port = free_port
    settings = build({"source": [str(SAMPLE_VIDEO)], "realtime": True, "loop": True,
                      "output": [f"http://127.0.0.1:{port}"]})
    engine = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    try:
        with Session(settings, engine, log=lambda msg: None) as session:
            runner = threading.Thread(target=session.run, daemon=True)
            runner.start()
            try:
                wait_for(lambda: overlays(port)[1] >= 5, what="unwatched frames")
                assert overlays(port)[0] == 0          # nobody watches: nothing drawn
                viewer = Viewer(port, "")              # a real MJPEG client: it got a frame
                try:
                    wait_for(lambda: len(viewer.arrivals) >= 3, what="frames to the viewer")
                    assert overlays(port)[0] >= 4
                finally:   # (its reader thread holds the socket's file: shut it down to end the connection)
                    viewer.sock.shutdown(socket.SHUT_RDWR)
                    viewer.close()
                wait_for(lambda: overlays(port)[2] == 0, what="the viewer to leave")
                time.sleep(0.3)                        # a frame drawn as it left is through
                drawn, skipped, _ = overlays(port)
                wait_for(lambda: overlays(port)[1] >= skipped + 5, what="more unwatched frames")
                assert overlays(port)[0] == drawn      # it left: no more drawing
            finally:
                session.stop(force=True, quiet=True)
                runner.join(30)
        assert not runner.is_alive()
    finally:
        engine.close()


class ListReader(Reader):
    def __init__(self, images):
        self.items, self.fps, self.description = list(images), 10.0, "test list"

    def read(self):
        return (self.items.pop(0), None) if self.items else None


class KeepSink(Sink):
    """Keeps what it is given; `size`: the size it wants its pixels at."""

    def __init__(self, size=None, pixels=True):
        self.size, self.pixels, self.got, self.opened = size, pixels, [], None

    def wants_pixels(self):
        return self.pixels

    def open(self, width, height, fps):
        self.opened = (width, height)

    def write(self, frame, overlay_bgr, labels):
        self.got.append(overlay_bgr)


def street_frames(n: int) -> list:
    reader = open_source(str(SAMPLE_VIDEO), CameraSettings())
    try:
        return [reader.read()[0] for _ in range(n)]
    finally:
        reader.close()


def test_each_size_an_output_wants_is_drawn_once_and_a_null_output_gets_none(tmp_path):
    engine = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    images = street_frames(4)
    h, w = images[0].shape[:2]
    full, full2, small, null = KeepSink(), KeepSink(), KeepSink(size=(w // 2, h // 2)), NullSink()
    p = Pipeline([Camera("cam0", ListReader(images), [full, full2, small, null])], engine, alpha=0.4)
    assert p.run() == 0
    engine.close()
    assert p.recorder.overlays("cam0") == (8, 0)                   # two sizes a frame, four frames
    assert full.opened == (w, h) and small.opened == (w // 2, h // 2)
    assert all(a is b for a, b in zip(full.got, full2.got))        # one drawing for both
    assert [g.shape[:2] for g in small.got] == [(h // 2, w // 2)] * 4
    lut = palette_bgr(engine.info.palette)
    x = preprocess(images[1], engine.info.input_size, engine.info.mean, engine.info.std)
    labels = OnnxEngine(tiny_onnx((64, 96)), threads=1).infer(x)[0]
    assert np.array_equal(full.got[1], render_overlay(images[1], labels, lut, 0.4))
    assert np.array_equal(small.got[1], render_overlay(cv2.resize(images[1], (w // 2, h // 2),
                                                                  interpolation=cv2.INTER_AREA), labels, lut, 0.4))


def test_the_api_overlay_is_drawn_only_when_asked_for():
    settings = build({"source": [str(SAMPLE_VIDEO)], "max_frames": 6, "output": ["null"], "alpha": 0.4})
    engine = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    lut = palette_bgr(engine.info.palette)
    try:
        with Session(settings, engine, keep_labels=True, log=lambda msg: None) as session:
            results = list(session.frames())
            assert session.recorder.overlays("cam0") == (0, 6)
            r = results[2]
            assert np.array_equal(r.overlay, render_overlay(r.image, r.labels, lut, 0.4))
            assert r.overlay is r.overlay                           # drawn once, then kept
            assert session.recorder.overlays("cam0") == (1, 6)
    finally:
        engine.close()


class CpuChainEngine(FusedEngine):
    """The GPU engines' shared fused path (FusedEngine: run_fused_frames -> chain.run) with a
    chain computed by the CPU references around a real ONNX Runtime engine; `modes` records
    what the pipeline asked the chain for."""

    def __init__(self, inner):
        self.inner, self.info, self.chain, self.modes = inner, inner.info, self, []

    def _on_gpu(self):
        return contextlib.nullcontext()

    def infer(self, batch):
        return self.inner.infer(batch)

    def run(self, frames, alpha, mode, maps, num_cells):
        self.modes.append(mode)
        out = []
        for frame in frames:
            labels = self.inner.infer(preprocess(frame, self.info.input_size, self.info.mean, self.info.std))[0]
            out.append((labels if mode == LABELS else
                        render_overlay(frame, labels, palette_bgr(self.info.palette), alpha, mode), None))
        return out


def test_a_gpu_chain_is_asked_for_labels_only_when_no_output_wants_pixels():
    inner = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    images = street_frames(3)
    for sinks, modes, drawn in (([NullSink()], [LABELS] * 3, 0), ([KeepSink(), NullSink()], ["overlay"] * 3, 3)):
        engine = CpuChainEngine(inner)
        p = Pipeline([Camera("cam0", ListReader(images), sinks)], engine, alpha=0.4)
        assert isinstance(p.inference, FusedInference) and p.run() == 0
        assert engine.modes == modes and p.recorder.overlays("cam0")[0] == drawn
    # a viewer that came after the chain ran gets the CPU overlay of the labels it brought back
    engine, late = CpuChainEngine(inner), KeepSink(pixels=False)
    p = Pipeline([Camera("cam0", ListReader(images[:1]), [late])], engine, alpha=0.4)

    def viewer_comes_now(camera):   # nobody watches as the chain runs; a viewer is there right after
        late.pixels = True
        return False

    p.inference.wants_pixels = viewer_comes_now
    assert p.run() == 0 and engine.modes == [LABELS]
    x = preprocess(images[0], inner.info.input_size, inner.info.mean, inner.info.std)
    assert np.array_equal(late.got[0], render_overlay(images[0], inner.infer(x)[0], palette_bgr(inner.info.palette), 0.4))
    inner.close()
