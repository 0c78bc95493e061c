"""TensorRT implicit INT8 (TensorRT 8.6 / 10.x): an IInt8EntropyCalibrator2 with a keyed cache.

TensorRT 11 removed implicit INT8 (calibrators, config.int8_calibrator): there the QDQ model
(`bisenet calibrate --target tensorrt`) is the only INT8 route, and the calibrator and
`write_tensorrt_cache` refuse with one line that says so.

TensorRT calibrates by pulling batches through `get_batch` and stores the resulting
per-tensor scales in a calibration cache. A cache is only valid for the exact network,
input preprocessing, input shape and TensorRT version it was measured with, but TensorRT
itself checks none of that. So the cache gets a key file beside it (`<cache>.json`):

    {"onnx_sha256", "preprocessing", "input_shape", "tensorrt_version"}

`read_calibration_cache` hands TensorRT the cache only when the key matches (printing
"reusing ..."), and otherwise says which parts changed and lets TensorRT recalibrate.

The key logic (`calibration_key`, `KeyedCache`, `CalibratorCore`) is plain Python and
tested without TensorRT; `EntropyCalibrator` itself subclasses
`tensorrt.IInt8EntropyCalibrator2` and is built on first use, so importing this module
never needs tensorrt or pycuda:

    from calibration.tensorrt_calibrator import EntropyCalibrator   # imports tensorrt here
    config.int8_calibrator = EntropyCalibrator("model.calib.cache", calib_set.batches(8),
                                               onnx_path="model.onnx", input_shape=(8, 3, 512, 1024),
                                               preprocessing=calib_set.preprocessing())
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from core.errors import InputError, SetupError
from core.files import atomic_write_bytes, file_sha256
from core.install_hint import extra_hint
from core.sidecar import sidecar_path
from engines.tensorrt_api import check_implicit_int8, import_tensorrt, network_flags, tensorrt_api, tensorrt_logger

KEY_FIELDS = ("onnx_sha256", "preprocessing", "input_shape", "tensorrt_version")


def calibration_key(onnx_path, preprocessing, input_shape, tensorrt_version: str) -> dict:
    """What a calibration cache is valid for. Change any part and the cache is rebuilt.
    A part passed as None is left unchecked (a build that only has the cache file)."""
    return {"onnx_sha256": file_sha256(onnx_path) if onnx_path is not None else None,
            "preprocessing": json.loads(json.dumps(preprocessing, sort_keys=True)) if preprocessing is not None else None,
            "input_shape": [int(d) for d in input_shape] if input_shape is not None else None,
            "tensorrt_version": str(tensorrt_version)}


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


class KeyedCache:
    """A TensorRT calibration cache file plus its key file `<cache>.json`."""

    def __init__(self, path: str | Path, key: dict):
        self.path = Path(path)
        self.key_path = sidecar_path(self.path)
        self.key = key

    def stored_key(self) -> dict | None:
        try:
            key = json.loads(self.key_path.read_text()).get("key")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
        return key if isinstance(key, dict) else None

    def check(self) -> tuple[bool, str]:
        """(usable, why): usable only when both files exist and the stored key matches."""
        if not self.path.is_file():
            return False, f"no calibration cache at {self.path}"
        if not self.key_path.is_file():
            return False, f"calibration cache {self.path} has no key file {self.key_path.name}"
        stored = self.stored_key()
        if stored is None:
            return False, f"key file {self.key_path} is not valid JSON"
        changed = [f for f in KEY_FIELDS if self.key.get(f) is not None and stored.get(f) != self.key[f]]
        if changed:
            return False, f"calibration cache {self.path} was made for a different {', '.join(changed)}"
        unchecked = [f for f in KEY_FIELDS if self.key.get(f) is None]
        if unchecked:
            return True, (f"calibration cache {self.path} (not checked: {', '.join(unchecked)}; pass onnx_path, "
                          "input_shape and preprocessing to check them)")
        return True, f"calibration cache {self.path} matches (onnx, preprocessing, input shape, TensorRT version)"

    def read(self) -> bytes | None:
        ok, _ = self.check()
        return self.path.read_bytes() if ok else None

    def write(self, table: bytes) -> None:
        """Cache first, key last: a key file only ever vouches for a complete cache."""
        self.key_path.unlink(missing_ok=True)
        atomic_write_bytes(self.path, bytes(table))
        meta = {"key": self.key, "key_sha256": key_digest(self.key), "cache_sha256": hashlib.sha256(table).hexdigest()}
        atomic_write_bytes(self.key_path, (json.dumps(meta, indent=1) + "\n").encode())


class CalibratorCore:
    """Everything the TensorRT calibrator does except touching the GPU: cache reuse, batch
    order and shape checks. `to_device(batch) -> pointer` is the only GPU part."""

    def __init__(self, cache: KeyedCache, batches=None, batch_shape=None, log=None):
        self.cache = cache
        if batch_shape is None:   # cache-only use: the shape the cache was made for
            batch_shape = (cache.stored_key() or {}).get("input_shape") or (1,)
        self.batch_shape = tuple(int(d) for d in batch_shape)
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.batches = iter(batches) if batches is not None else None
        self.used_batches = 0
        self.reused, why = cache.check()
        if self.reused:
            self.log(f"reusing {why}")
        elif self.batches is None:
            raise SetupError(f"{why} and no calibration images were given; pass calibration data "
                               "(e.g. --calib-data train.txt) to calibrate")
        else:
            self.log(f"{why}; recalibrating")

    @property
    def batch_size(self) -> int:
        return self.batch_shape[0]

    def next_batch(self) -> np.ndarray | None:
        """The next full [B, 3, H, W] float32 batch, or None when done (TensorRT then stops).
        A last partial batch is dropped: TensorRT takes exactly B images per call."""
        if self.reused or self.batches is None:
            return None
        batch = next(self.batches, None)
        if batch is None or batch.shape[0] != self.batch_size:
            return None
        if tuple(batch.shape) != self.batch_shape:
            raise InputError(f"calibration batch {tuple(batch.shape)} does not match the network input "
                             f"{self.batch_shape}; preprocess to the engine's input size")
        self.used_batches += 1
        return np.ascontiguousarray(batch, dtype=np.float32)

    def read_calibration_cache(self):
        return self.cache.read() if self.reused else None

    def write_calibration_cache(self, table) -> None:
        self.cache.write(bytes(table))
        self.log(f"wrote calibration cache {self.cache.path} ({self.used_batches} batches of {self.batch_size})")


TENSORRT_CALIBRATION_HINT = ("TensorRT INT8 calibration needs the tensorrt Python package "
                             f"(JetPack ships it; elsewhere: {extra_hint('gpu', 'tensorrt pycuda')})")


def implicit_int8_tensorrt(onnx_name="model.onnx"):
    """tensorrt, on a version that still has implicit INT8 (8.6, 10.x): a one-line error otherwise."""
    trt = import_tensorrt(TENSORRT_CALIBRATION_HINT)
    check_implicit_int8(tensorrt_api(trt.__version__), onnx_name)
    return trt


def _device_feed(nbytes: int):
    """(PrimaryContext, device buffer) for feeding TensorRT: pycuda in CUDA's primary context,
    the one TensorRT builds in (pycuda.autoinit would make a second, private context)."""
    try:
        from engines.cuda_context import PrimaryContext
        context = PrimaryContext("pycuda")
    except ImportError:
        raise SetupError("TensorRT INT8 calibration feeds the GPU through pycuda: pip install pycuda") from None
    with context:
        return context, context.cuda.mem_alloc(nbytes)


def _build_entropy_calibrator():
    trt = implicit_int8_tensorrt()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        """IInt8EntropyCalibrator2 fed from `batches` ([B, 3, H, W] float32, e.g.
        `CalibrationSet.batches(B)`) through a pycuda device buffer; cache keyed as above.
        With only `cache_path` it reuses an existing cache, checking the TensorRT version
        (and whichever of onnx_path / input_shape / preprocessing are given)."""

        def __init__(self, cache_path, batches=None, *, onnx_path=None, input_shape=None,
                     preprocessing: dict | None = None, tensorrt_version: str | None = None, log=None):
            trt.IInt8EntropyCalibrator2.__init__(self)
            key = calibration_key(onnx_path, preprocessing, input_shape, tensorrt_version or trt.__version__)
            self.core = CalibratorCore(KeyedCache(cache_path, key), batches, input_shape, log)
            self._context = self._device = None
            if not self.core.reused:           # batches will be fed: the device buffer now, not mid-build
                self._context, self._device = _device_feed(int(np.prod(self.core.batch_shape)) * 4)

        def get_batch_size(self):
            return self.core.batch_size

        def get_batch(self, names):
            batch = self.core.next_batch()
            if batch is None:
                return None
            with self._context:                # TensorRT may call from a thread of its own
                self._context.cuda.memcpy_htod(self._device, batch)
            return [int(self._device)]

        def close(self) -> None:
            """Free the device buffer in its context (from whichever thread calls)."""
            if self._device is not None:
                with self._context:
                    self._device.free()
                self._device = None

        def read_calibration_cache(self):
            return self.core.read_calibration_cache()

        def write_calibration_cache(self, cache):
            self.core.write_calibration_cache(cache)

    return EntropyCalibrator


def write_tensorrt_cache(onnx_path, calib_set, cache_path, log=None) -> Path:
    """Run TensorRT's entropy calibration over `calib_set` (the same images and preprocess
    as the QDQ flavors) and write the keyed cache for implicit INT8 builds. Needs tensorrt,
    pycuda and an NVIDIA GPU; the engine built on the way is thrown away."""
    trt = implicit_int8_tensorrt(Path(onnx_path).name)
    from engines.cuda_context import PrimaryContext

    try:
        context = PrimaryContext("pycuda")
    except ImportError:
        raise SetupError("TensorRT INT8 calibration feeds the GPU through pycuda: pip install pycuda") from None
    # CUDA's primary context is current before the builder exists: TensorRT builds in it and
    # the calibrator's pycuda buffer lives in it.
    with context:
        logger = tensorrt_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(network_flags(trt, tensorrt_api(trt.__version__)))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            raise SetupError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {parser.get_error(0)}")
        shape = tuple(network.get_input(0).shape)
        if any(d < 0 for d in shape):
            raise InputError(f"{onnx_path} has a dynamic input {shape}; calibrate a static export for TensorRT")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.INT8)
        calibrator = entropy_calibrator_class()(cache_path, calib_set.batches(shape[0]), onnx_path=onnx_path,
                                                input_shape=shape, preprocessing=calib_set.preprocessing(), log=log)
        config.int8_calibrator = calibrator
        try:
            if builder.build_serialized_network(network, config) is None:
                raise SetupError(f"TensorRT could not calibrate {onnx_path}; rerun with a TensorRT verbose log")
        finally:
            calibrator.close()
    return Path(cache_path)


def cache_calibrator(cache_path, onnx_path, input_shape, onnx_meta: dict):
    """The calibrator of an implicit INT8 build (`bisenet build --calib-cache`, handed to
    engines.tensorrt_build as BuildOptions.int8_calibrator): it only reads the cache (no images)
    and refuses one made for another ONNX, input shape, preprocessing or TensorRT version."""
    from calibration.image_set import preprocessing_record
    return entropy_calibrator_class()(
        str(cache_path), onnx_path=onnx_path, input_shape=input_shape,
        preprocessing=preprocessing_record(input_shape[2:], onnx_meta["mean"], onnx_meta["std"]))


_entropy_calibrator_class = None


def entropy_calibrator_class():
    """`EntropyCalibrator` must subclass a tensorrt type, so it is built on first use: importing
    this module stays free of tensorrt for the pure-Python parts."""
    global _entropy_calibrator_class
    if _entropy_calibrator_class is None:
        _entropy_calibrator_class = _build_entropy_calibrator()
    return _entropy_calibrator_class


def __getattr__(name):
    # `from calibration.tensorrt_calibrator import EntropyCalibrator` (PEP 562).
    if name == "EntropyCalibrator":
        return entropy_calibrator_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
