"""TensorRT calibration cache: keyed by ONNX sha256 + preprocessing + input shape + TensorRT
version; reused when the key matches, rebuilt (with a message) when it does not. The key
logic is plain Python; the TensorRT class itself is tested where tensorrt imports."""
import importlib.util
import json

import numpy as np
import pytest

from calibration.tensorrt_calibrator import CalibratorCore, KeyedCache, calibration_key
from testkit.calib_fixtures import tiny_segmenter

PRE = {"function": "app.preprocess.preprocess", "size_hw": [64, 128], "mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]}
SHAPE = (2, 3, 64, 128)


def batches(n=3, shape=SHAPE):
    rng = np.random.default_rng(0)
    return [rng.normal(size=shape).astype(np.float32) for _ in range(n)]


def core(cache_path, onnx_path, shape=SHAPE, pre=PRE, trt_version="8.6.1", data="default", log=None):
    key = calibration_key(onnx_path, pre, shape, trt_version)
    return CalibratorCore(KeyedCache(cache_path, key), batches(shape=shape) if data == "default" else data,
                          shape, log=log if log is not None else (lambda m: None))


def calibrate_once(c):
    """What TensorRT does: ask for the cache, pull batches until None, write the cache."""
    if c.read_calibration_cache() is not None:
        return 0
    pulled = 0
    while c.next_batch() is not None:
        pulled += 1
    c.write_calibration_cache(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    return pulled


def test_same_key_reuses_and_changed_onnx_or_shape_recalibrates(tmp_path):
    onnx_path = tiny_segmenter(tmp_path / "m.onnx")
    cache = tmp_path / "m.calib.cache"
    messages = []
    first = core(cache, onnx_path, log=messages.append)
    assert not first.reused and calibrate_once(first) == 3
    assert cache.is_file() and (tmp_path / "m.calib.cache.json").is_file()

    same = core(cache, onnx_path, log=messages.append)
    assert same.reused
    assert same.read_calibration_cache() == cache.read_bytes()
    assert same.next_batch() is None          # nothing is recomputed
    assert calibrate_once(same) == 0
    assert "reusing" in messages[-1]

    tiny_segmenter(onnx_path, seed=1)          # same graph, other weights: another sha256
    changed = core(cache, onnx_path, log=messages.append)
    assert not changed.reused and changed.read_calibration_cache() is None
    assert "onnx_sha256" in messages[-1] and "recalibrating" in messages[-1]
    assert calibrate_once(changed) == 3

    other_shape = (1, 3, 64, 128)
    reshaped = core(cache, onnx_path, shape=other_shape, log=messages.append)
    assert not reshaped.reused and "input_shape" in messages[-1]
    assert calibrate_once(reshaped) == 3
    assert core(cache, onnx_path, shape=other_shape).reused     # the rebuilt cache is now the valid one


def test_preprocessing_and_tensorrt_version_are_part_of_the_key(tmp_path):
    onnx_path = tiny_segmenter(tmp_path / "m.onnx")
    cache = tmp_path / "c.cache"
    calibrate_once(core(cache, onnx_path))
    messages = []
    assert not core(cache, onnx_path, pre={**PRE, "mean": [0.0, 0.0, 0.0]}, log=messages.append).reused
    assert "preprocessing" in messages[-1]
    assert not core(cache, onnx_path, trt_version="10.3.0", log=messages.append).reused
    assert "tensorrt_version" in messages[-1]
    stored = json.loads((tmp_path / "c.cache.json").read_text())
    assert stored["key"]["input_shape"] == list(SHAPE) and stored["key"]["tensorrt_version"] == "8.6.1"


def test_cache_without_key_file_is_not_trusted(tmp_path):
    onnx_path = tiny_segmenter(tmp_path / "m.onnx")
    cache = tmp_path / "c.cache"
    cache.write_bytes(b"a cache of unknown origin")
    messages = []
    assert not core(cache, onnx_path, log=messages.append).reused
    assert "no key file" in messages[-1]


def test_stale_cache_and_no_images_is_one_clear_error(tmp_path):
    onnx_path = tiny_segmenter(tmp_path / "m.onnx")
    with pytest.raises(RuntimeError, match="no calibration cache.*calibration data"):
        core(tmp_path / "missing.cache", onnx_path, data=None)


def test_partial_last_batch_is_dropped_and_wrong_shape_refused(tmp_path):
    onnx_path = tiny_segmenter(tmp_path / "m.onnx")
    data = batches(2) + [np.zeros((1, 3, 64, 128), np.float32)]
    c = core(tmp_path / "a.cache", onnx_path, data=data)
    assert c.next_batch().shape == SHAPE and c.next_batch().shape == SHAPE
    assert c.next_batch() is None and c.used_batches == 2
    bad = core(tmp_path / "b.cache", onnx_path, data=[np.zeros((2, 3, 32, 64), np.float32)])
    with pytest.raises(ValueError, match="does not match the network input"):
        bad.next_batch()


HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; this checks the message when it is not")
def test_entropy_calibrator_without_tensorrt_says_what_to_install():
    import calibration.tensorrt_calibrator as tc

    with pytest.raises(RuntimeError, match="tensorrt"):
        tc.EntropyCalibrator


def _implicit_int8_tensorrt() -> bool:
    """tensorrt imports and still has calibrators (8.6, 10.x; 11.x removed them)."""
    if not HAS_TRT:
        return False
    import tensorrt as trt

    from engines.tensorrt_api import tensorrt_api
    return tensorrt_api(trt.__version__).implicit_int8


def _cuda_gpu() -> bool:
    if not _implicit_int8_tensorrt() or importlib.util.find_spec("pycuda") is None:
        return False
    try:
        import pycuda.driver as cuda
        cuda.init()
        return cuda.Device.count() > 0
    except Exception:
        return False


NEEDS_GPU = "needs an NVIDIA GPU with pycuda and tensorrt 8.6 or 10.x (11.x has no implicit INT8)"


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_gpu(), reason=NEEDS_GPU)
def test_entropy_calibrator_is_a_tensorrt_calibrator_with_the_keyed_cache(tmp_path):
    import tensorrt as trt

    from calibration.tensorrt_calibrator import EntropyCalibrator

    onnx_path = tiny_segmenter(tmp_path / "m.onnx")
    cache = tmp_path / "m.calib.cache"
    first = EntropyCalibrator(cache, batches(), onnx_path=onnx_path, input_shape=SHAPE, preprocessing=PRE)
    assert isinstance(first, trt.IInt8EntropyCalibrator2)
    assert first.get_batch_size() == 2 and first.read_calibration_cache() is None
    first.write_calibration_cache(b"TRT-table")
    again = EntropyCalibrator(cache, None, onnx_path=onnx_path, input_shape=SHAPE, preprocessing=PRE)
    assert again.read_calibration_cache() == b"TRT-table" and again.get_batch(["input"]) is None
    with pytest.raises(RuntimeError, match="no calibration images"):
        EntropyCalibrator(cache, None, onnx_path=onnx_path, input_shape=(1, 3, 64, 128), preprocessing=PRE)


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_gpu(), reason=NEEDS_GPU)
def test_tensorrt_int8_build_writes_then_reuses_the_cache(tmp_path):
    """Built in this thread, calibrated from TensorRT's (the calibrator pushes CUDA's primary context)."""
    import tensorrt as trt

    from calibration.tensorrt_calibrator import EntropyCalibrator
    from engines.tensorrt_api import network_flags, tensorrt_api, tensorrt_logger

    onnx_path = tiny_segmenter(tmp_path / "m.onnx")
    cache = tmp_path / "m.calib.cache"

    def build(data):
        logger = tensorrt_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt, tensorrt_api(trt.__version__)))
        parser = trt.OnnxParser(network, logger)
        assert parser.parse(onnx_path.read_bytes())
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.INT8)
        calib = EntropyCalibrator(cache, data, onnx_path=onnx_path, input_shape=(1, 3, 64, 128), preprocessing=PRE)
        config.int8_calibrator = calib
        assert builder.build_serialized_network(network, config) is not None
        return calib

    first = build(batches(4, (1, 3, 64, 128)))
    assert first.core.used_batches == 4 and cache.is_file()
    second = build(None)
    assert second.core.reused and second.core.used_batches == 0


def test_cache_only_use_checks_what_it_is_given(tmp_path):
    """`bisenet build --calib-cache` only has the cache: the TensorRT version is still checked,
    the batch shape comes from the key file, and the message says what went unchecked."""
    onnx_path = tiny_segmenter(tmp_path / "m.onnx")
    cache = tmp_path / "c.cache"
    calibrate_once(core(cache, onnx_path))
    messages = []
    only_cache = CalibratorCore(KeyedCache(cache, calibration_key(None, None, None, "8.6.1")), None, None,
                                log=messages.append)
    assert only_cache.reused and only_cache.batch_shape == SHAPE
    assert "not checked: onnx_sha256, preprocessing, input_shape" in messages[-1]
    with pytest.raises(RuntimeError, match="different tensorrt_version"):
        CalibratorCore(KeyedCache(cache, calibration_key(None, None, None, "10.3.0")), None, None)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here; this checks the message when it is not")
def test_trt_cache_without_tensorrt_fails_before_calibrating(tmp_path, capsys):
    from app.cli import main as cli

    onnx_path = tiny_segmenter(tmp_path / "m.onnx")
    assert cli(["calibrate", "--onnx", str(onnx_path), "--data", str(tmp_path), "--trt-cache", str(tmp_path / "c"),
                "-o", str(tmp_path / "m.int8.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the tensorrt Python package" in err[0]
