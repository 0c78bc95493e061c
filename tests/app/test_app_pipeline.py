"""The threaded pipeline with a real ONNX Runtime session (random-weight R18 at 64x96)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from app.frames import Reader, ReadError, Sink
from app.hud import draw_hud, draw_legend
from app.latency import LatencyRecorder, read_log
from core.overlay import palette_bgr, render_overlay
from app.camera import Camera
from app.pipeline import FusedInference, Pipeline
from core.preprocess import preprocess
from app.sources import open_source
from engines.onnx_engine import OnnxEngine
from testkit.app_helpers import SAMPLE_VIDEO, tiny_onnx


@pytest.fixture(scope="module")
def engine():
    eng = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    yield eng
    eng.close()


class ListReader(Reader):
    """Hands out a list of images (or exceptions to raise) as a file or a live source."""

    def __init__(self, items, live=False):
        self.items = list(items)
        self.live = live
        self.fps = 10.0
        self.description = "test list"

    def read(self):
        if not self.items:
            return None
        item = self.items.pop(0)
        if isinstance(item, Exception):
            raise item
        return item, None


class CollectSink(Sink):
    def __init__(self, name="collect", fail_at=None, on_write=None):
        self.name = name
        self.fail_at = fail_at
        self.on_write = on_write
        self.ids, self.images, self.opened, self.closed = [], [], None, False

    def open(self, width, height, fps):
        self.opened = (width, height, fps)

    def write(self, frame, overlay_bgr, labels):
        if self.fail_at is not None and len(self.ids) >= self.fail_at:
            raise OSError("disk on fire")
        self.ids.append(frame.id)
        self.images.append(overlay_bgr.copy())
        if self.on_write:
            self.on_write(frame)

    def close(self):
        self.closed = True


def one_camera(reader, engine, sinks, *, max_frames=None, queue_size=4, **options) -> Pipeline:
    """A pipeline of one camera, cam0 (what a session of one --source builds)."""
    return Pipeline([Camera("cam0", reader, sinks, max_frames=max_frames, queue_size=queue_size)], engine, **options)


def images(n, size=(36, 48), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 255, (*size, 3), dtype=np.uint8) for _ in range(n)]


def assert_accounted(pipeline, rows):
    ids = sorted(r["frame"] for r in rows)
    assert ids == list(range(pipeline.captured)), "every captured id has exactly one row"
    s = pipeline.recorder.summary(pipeline.captured)
    assert s["unaccounted"] == 0 and s["written"] + s["dropped"] == pipeline.captured


def test_file_source_writes_every_frame_in_order_with_the_reference_overlay(engine, tmp_path):
    imgs = images(12)
    sink = CollectSink()
    rec = LatencyRecorder(tmp_path / "lat.csv")
    p = one_camera(ListReader(imgs), engine, [sink], recorder=rec, alpha=0.4, queue_size=2)
    assert p.run() == 0
    assert sink.ids == list(range(12)) and sink.opened == (48, 36, 10.0) and sink.closed
    lut = palette_bgr(engine.info.palette)
    for img, out in zip(imgs, sink.images):
        labels = engine.infer(preprocess(img, engine.info.input_size, engine.info.mean, engine.info.std))[0]
        assert np.array_equal(out, render_overlay(img, labels, lut, 0.4))
    rows = read_log(tmp_path / "lat.csv")
    assert len(rows) == 12 and not any(r["dropped"] for r in rows)
    for r in rows:
        stages = [r[k] for k in ("queue_ms", "preprocess_ms", "inference_ms", "overlay_ms", "sink_ms")]
        assert all(v is not None and v >= 0 for v in stages)
        assert r["e2e_ms"] >= r["inference_ms"]
    assert_accounted(p, rows)


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason="no sample video")
def test_max_frames_and_side_by_side(engine):
    sink = CollectSink()
    p = one_camera(open_source(str(SAMPLE_VIDEO)), engine, [sink], mode="side-by-side", max_frames=5)
    assert p.run() == 0
    assert sink.ids == [0, 1, 2, 3, 4] and sink.opened[:2] == (960, 360)


def test_live_source_keeps_the_newest_frame_and_accounts_for_every_drop(engine, tmp_path):
    sink = CollectSink()
    rec = LatencyRecorder(tmp_path / "lat.jsonl")
    # 120 frames handed out as fast as the reader can: far faster than the model runs.
    p = one_camera(ListReader(images(120, seed=1), live=True), engine, [sink], recorder=rec)
    assert p.run() == 0
    rows = read_log(tmp_path / "lat.jsonl")
    assert_accounted(p, rows)
    dropped = [r for r in rows if r["dropped"]]
    assert dropped and all(r["reason"] == "queue_full" for r in dropped)
    assert sink.ids == sorted(sink.ids) and sink.ids[-1] == 119   # the newest frame is never lost


def test_bad_frames_are_dropped_with_their_reason_and_the_run_goes_on(engine, tmp_path):
    good = images(3)
    items = [good[0], ReadError("corrupt packet"), np.zeros((8, 8), np.uint8), good[1], good[2]]
    sink = CollectSink()
    rec = LatencyRecorder(tmp_path / "lat.csv")
    p = one_camera(ListReader(items), engine, [sink], recorder=rec)
    assert p.run() == 0
    rows = {r["frame"]: r for r in read_log(tmp_path / "lat.csv")}
    assert rows[1]["reason"] == "decode_error" and rows[2]["reason"] == "inference_error"
    assert sink.ids == [0, 3, 4]
    assert_accounted(p, list(rows.values()))


def test_a_failing_sink_is_switched_off_and_the_others_go_on(engine):
    good, bad = CollectSink("good"), CollectSink("bad", fail_at=2)
    p = one_camera(ListReader(images(6)), engine, [bad, good])
    assert p.run() == 0
    assert good.ids == list(range(6)) and bad.ids == [0, 1]
    assert "disk on fire" in p.sink_failures["bad"] and bad.closed


def test_every_sink_failing_stops_the_run_with_an_error(engine):
    p = one_camera(ListReader(images(6)), engine, [CollectSink("bad", fail_at=0)])
    assert p.run() == 1
    assert p.recorder.dropped["sink_error"] >= 1 and p.recorder.written == 0


def test_stop_drains_the_captured_frames_in_order(engine):
    holder = {}
    sink = CollectSink(on_write=lambda f: f.id == 2 and holder["p"].request_stop("test stop"))
    p = holder["p"] = one_camera(ListReader(images(40)), engine, [sink], queue_size=3)
    assert p.run() == 0
    # Capture stopped soon after frame 2; everything captured by then was still written.
    assert 3 <= p.captured < 40
    assert sink.ids == list(range(p.captured)) and p.recorder.written == p.captured


def test_a_second_stop_drops_what_is_queued(engine):
    holder = {}

    def stop_twice(frame):
        if frame.id == 1:
            holder["p"].request_stop("first")
            holder["p"].request_stop("second")

    sink = CollectSink(on_write=stop_twice)
    p = holder["p"] = one_camera(ListReader(images(40)), engine, [sink], queue_size=3)
    p.run()
    assert sink.ids == [0, 1] and sink.closed
    assert p.recorder.written + p.recorder.dropped["shutdown"] == p.captured


def test_hud_and_legend_only_touch_their_corners():
    img = np.full((360, 480, 3), 100, np.uint8)
    draw_hud(img, 12.3, 80.0, 45.0)
    lut = palette_bgr(np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]]))
    draw_legend(img, ["road", "tree", "sky"], lut, present={0, 2})
    changed = np.argwhere((img != 100).any(axis=2))
    assert len(changed)
    top_left = (changed[:, 0] < 60) & (changed[:, 1] < 400)
    top_right = (changed[:, 0] < 80) & (changed[:, 1] > 300)
    assert (top_left | top_right).all()
    assert (img[100:, :] == 100).all()


class CpuFusedEngine:
    """Stands in for TensorRTEngine's GPU chain (no GPU here): the same run_fused contract,
    computed with the CPU references, around the real ONNX Runtime engine."""

    def __init__(self, engine):
        self.inner, self.info, self.input_dtype = engine, engine.info, engine.input_dtype
        self.fused_calls = 0

    def infer(self, batch):
        return self.inner.infer(batch)

    def run_fused(self, frame_bgr, alpha, mode):
        self.fused_calls += 1
        info = self.info
        labels = self.inner.infer(preprocess(frame_bgr, info.input_size, info.mean, info.std))[0]
        return render_overlay(frame_bgr, labels, palette_bgr(info.palette), alpha, mode)


class CpuFusedFramesEngine(CpuFusedEngine):
    """TensorRTEngine's batched GPU chain (run_fused_frames: several frames per call, up to
    batch_limit), computed with the CPU references around a real dynamic-batch ONNX Runtime engine."""

    def __init__(self, engine):
        super().__init__(engine)
        self.calls = []

    def batch_limit(self, cameras):
        return self.inner.batch_limit(cameras)

    def run_fused_frames(self, frames, alpha, mode):
        self.calls.append(len(frames))
        info = self.info
        x = np.concatenate([preprocess(f, info.input_size, info.mean, info.std) for f in frames])
        lut = palette_bgr(info.palette)
        return [render_overlay(f, labels, lut, alpha, mode) for f, labels in zip(frames, self.inner.infer(x))]


def test_a_fused_gpu_path_with_run_fused_frames_gets_the_cameras_batch():
    engine = OnnxEngine(tiny_onnx((64, 96), dynamic_batch=True), threads=1)
    imgs = [images(5, seed=s) for s in (4, 5, 6)]
    refs = [CollectSink(f"ref{i}") for i in range(3)]
    assert Pipeline([Camera(f"cam{i}", ListReader(imgs[i]), [refs[i]]) for i in range(3)], engine, alpha=0.3).run() == 0
    fused, outs = CpuFusedFramesEngine(engine), [CollectSink(f"out{i}") for i in range(3)]
    p = Pipeline([Camera(f"cam{i}", ListReader(imgs[i]), [outs[i]]) for i in range(3)], fused, alpha=0.3)
    assert p.scheduler.batch_size == 3
    assert p.run() == 0
    assert sum(fused.calls) == 15 and max(fused.calls) == 3 and fused.fused_calls == 0
    for ref, out in zip(refs, outs):
        assert out.ids == ref.ids == list(range(5))
        assert all(np.array_equal(a, b) for a, b in zip(ref.images, out.images))
    engine.close()


def test_an_engine_with_a_fused_gpu_path_gets_frames_not_batches(engine):
    imgs = images(6, seed=3)
    fused, plain = CpuFusedEngine(engine), CollectSink("plain")
    ref = CollectSink("ref")
    assert one_camera(ListReader(imgs), engine, [ref], alpha=0.3).run() == 0
    p = one_camera(ListReader(imgs), fused, [plain], alpha=0.3)
    assert p.run() == 0
    assert fused.fused_calls == 6
    assert all(np.array_equal(a, b) for a, b in zip(ref.images, plain.images))
    # the legend needs labels on the host: back to the CPU overlay
    legend = CpuFusedEngine(engine)
    assert one_camera(ListReader(imgs), legend, [CollectSink()], legend=True).run() == 0
    assert legend.fused_calls == 0


class ColorLabels:
    """An engine whose labels follow the image (class = which of the B, G, R channels are above
    their mean), so zones see mixed classes; the random-weight network paints one class."""

    def __init__(self, info):
        self.info = info

    def infer(self, batch):
        return ((batch[:, 0] > 0).astype(np.int32) + 2 * (batch[:, 1] > 0) + 4 * (batch[:, 2] > 0))


class CpuFusedCounts:
    """The fused_counts contract (what the TensorRT and PyTorch-CUDA engines do on the GPU) on the
    CPU: the inner engine's labels, the reference overlay, and the zone counts by the cell maps
    the pipeline hands over. Only the overlays and counts leave it, as on the GPU."""

    def __init__(self, inner):
        self.inner, self.info = inner, inner.info

    def infer(self, batch):
        raise AssertionError("the fused path never calls infer()")

    def run_fused_frames(self, frames, alpha=0.5, mode="overlay"):
        raise AssertionError("with analytics on, a fused_counts engine is asked for the counts")

    def run_fused_counts(self, frames, cells, num_cells, alpha=0.5, mode="overlay"):
        from engines.cuda_kernels import stack_cell_maps

        maps = stack_cell_maps(cells, len(frames), self.info.input_size, num_cells)   # the GPU engines' own check
        c = self.info.num_classes
        overlays, counts = [], []
        for frame, cell_map in zip(frames, maps):
            x = preprocess(frame, tuple(self.info.input_size), self.info.mean, self.info.std)
            labels = np.asarray(self.inner.infer(x))[0]
            overlays.append(render_overlay(frame, labels, palette_bgr(self.info.palette), alpha, mode))
            index = cell_map.astype(np.int64) * c + labels
            counts.append(np.bincount(index.ravel(), minlength=num_cells * c).astype(np.uint32).reshape(num_cells, c))
        return overlays, counts


def test_analytics_keep_a_fused_counts_engine_on_its_fused_path_with_the_same_coverage(engine, tmp_path):
    """Scene analytics with a fused engine: the pipeline hands each frame's zone cell map to
    run_fused_counts and reads the coverage from the counts (labels stay on the device); the
    coverage, events and overlays equal those of the label path."""
    from app.analytics import Analytics
    from app.analytics.specs import parse_camera_analytics
    from app.settings import AnalyticsSettings

    frames = images(8, size=(40, 60), seed=3)
    labels_engine = ColorLabels(engine.info)
    seen_classes = list(engine.info.class_names[:3])
    zones = [{"name": "left", "polygon": [[0, 0], [0.5, 0], [0.5, 1], [0, 1]], "classes": seen_classes + ["sky"]},
             {"name": "low", "polygon": [[0, 0.6], [1, 0.6], [1, 1], [0, 1]], "classes": seen_classes}]
    rules = [{"name": "any", "zone": "low", "class": seen_classes[0], "above": 0.0, "for_s": 0}]
    results = {}
    for name, eng in (("labels", labels_engine), ("fused", CpuFusedCounts(labels_engine))):
        config = parse_camera_analytics(zones, rules, "test")
        config.check_classes(list(engine.info.class_names), "test")
        log = tmp_path / f"{name}.jsonl"
        analytics = Analytics(AnalyticsSettings(coverage_log=str(log)), {"cam0": config}, engine.info.class_names)
        seen = []
        sink = CollectSink(on_write=lambda frame, seen=seen: seen.append((frame.coverage, [m["type"] for m in frame.events])))
        p = one_camera(ListReader(list(frames)), eng, [sink], analytics=analytics)
        assert isinstance(p.inference, FusedInference) == (name == "fused")
        p.run()
        analytics.close()
        assert sink.ids == list(range(8))
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        results[name] = (seen, sink.images, [{k: v for k, v in row.items() if k != "time_s"} for row in rows])
    assert results["fused"][0] == results["labels"][0]
    assert any(events == ["start"] for _, events in results["fused"][0]), results["fused"][0]
    assert any(0 < ratio < 1 for coverage, _ in results["fused"][0] for zone in coverage.values()
               for ratio in zone.values())   # coverage worth comparing
    assert all(np.array_equal(a, b) for a, b in zip(results["fused"][1], results["labels"][1]))
    assert results["fused"][2] == results["labels"][2] and len(results["fused"][2]) == 8


class PoolEngine:
    """A remote engine's contract (submit -> Future, labels_of), as Triton's client keeps
    requests in flight, around the real ONNX Runtime engine on a thread pool. Requests listed
    in `down` fail the way an unreachable server does."""

    def __init__(self, engine, down=()):
        from concurrent.futures import ThreadPoolExecutor

        self.inner, self.info, self.input_dtype = engine, engine.info, engine.input_dtype
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.down, self.sent = set(down), 0

    def infer(self, batch):
        raise AssertionError("an asynchronous engine is sent requests, not called")

    def submit(self, batch):
        from engines.base import ServerDown

        n, self.sent = self.sent, self.sent + 1
        if n in self.down:
            return self.pool.submit(lambda: (_ for _ in ()).throw(ServerDown("server unreachable")))
        return self.pool.submit(self.inner.infer, batch)


def test_a_remote_engine_keeps_requests_in_flight_with_the_overlays_of_the_local_one(engine, tmp_path):
    from app.pipeline import AsyncInference

    imgs = images(8, seed=7)
    ref = CollectSink("ref")
    assert one_camera(ListReader(imgs), engine, [ref], alpha=0.3).run() == 0
    remote, out = PoolEngine(engine, down={2}), CollectSink("out")
    rec = LatencyRecorder(tmp_path / "lat.csv")
    p = one_camera(ListReader(imgs), remote, [out], alpha=0.3, recorder=rec)
    assert isinstance(p.inference, AsyncInference)
    assert p.run() == 0
    assert out.ids == [0, 1, 3, 4, 5, 6, 7]   # the request the server never answered: dropped, the rest go on
    assert all(np.array_equal(ref.images[i], img) for i, img in zip(out.ids, out.images))
    rows = {r["frame"]: r for r in read_log(tmp_path / "lat.csv")}
    assert rows[2]["reason"] == "server_down" and len(rows) == 8
    remote.pool.shutdown()
