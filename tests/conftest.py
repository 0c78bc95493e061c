"""Fixtures shared by the test folders: the shared CamVid model exported once, the street
clip, a free port on 127.0.0.1 and a running mosquitto broker. (The support code both tests/
and bench/ import is testkit/.)"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import os
import shutil
from pathlib import Path

import pytest

from testkit import app_helpers
from testkit.analytics_helpers import MOSQUITTO, Broker

REPO = app_helpers.REPO
CAMVID_CHECKPOINT = REPO.parent / "shared" / "models" / "camvid_r18-d32_cpu.pth"
CAMVID_CONFIG = "bisenetv1_r18-d32_camvid-360x480"
CAMVID_SIZE = (352, 480)
EXPORT_CACHE = REPO / "artifacts" / "test-cache"


def export_key(checkpoint: Path) -> str:
    """What the exported file depends on: the checkpoint (size, mtime), the code and configs
    that build and export the network, and the torch and onnx versions."""
    h = hashlib.sha256()
    stat = checkpoint.stat()
    h.update(f"{checkpoint.name} {stat.st_size} {stat.st_mtime_ns} {CAMVID_SIZE}".encode())
    for package in ("torch", "onnx", "onnxslim"):
        try:
            h.update(f"{package} {importlib.metadata.version(package)}".encode())
        except importlib.metadata.PackageNotFoundError:
            pass
    for folder, pattern in (("core", "*.py"), ("training", "*.py"), ("engines", "export*.py"), ("configs", "*.yaml")):
        for path in sorted((REPO / folder).rglob(pattern)):
            h.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def camvid_onnx(tmp_path_factory) -> Path:
    """The shared CamVid checkpoint (../shared/models/camvid_r18-d32_cpu.pth) exported at 352x480,
    labels head, as `bisenet export` writes it. Exported once and kept under artifacts/test-cache
    (keyed by export_key), so the one-process-per-file runner exports it once for the suite; each
    session gets its own copy, so what a test writes beside the model stays in that session."""
    if not CAMVID_CHECKPOINT.is_file():
        pytest.skip(f"no trained CamVid checkpoint at {CAMVID_CHECKPOINT}")
    cached = EXPORT_CACHE / f"camvid_r18_{CAMVID_SIZE[0]}x{CAMVID_SIZE[1]}_{export_key(CAMVID_CHECKPOINT)}"
    EXPORT_CACHE.mkdir(parents=True, exist_ok=True)
    with open(EXPORT_CACHE / "export.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # the per-file runner runs two files at once
        if not (cached / "camvid.onnx").is_file():
            from core.model_config import load_model_config
            from engines.export import export_onnx

            # Under the lock anything else here is stale: another key (the code or checkpoint
            # changed) or a partial export whose process died.
            for old in [*EXPORT_CACHE.glob("camvid_r18_*"), *EXPORT_CACHE.glob(".partial-*")]:
                shutil.rmtree(old, ignore_errors=True)
            partial = EXPORT_CACHE / f".partial-{os.getpid()}"
            partial.mkdir()
            export_onnx(load_model_config(CAMVID_CONFIG), CAMVID_CHECKPOINT, partial / "camvid.onnx", CAMVID_SIZE)
            partial.rename(cached)
    copy = shutil.copytree(cached, tmp_path_factory.mktemp("camvid_onnx") / "model")
    return Path(copy) / "camvid.onnx"


@pytest.fixture
def street_clip() -> Path:
    """The shared street clip (../shared/data/samples/camvid_0016E5_15fps.mp4, 15 fps CamVid)."""
    if not app_helpers.SAMPLE_VIDEO.is_file():
        pytest.skip(f"no street clip at {app_helpers.SAMPLE_VIDEO}")
    return app_helpers.SAMPLE_VIDEO


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    return app_helpers.free_port()


@pytest.fixture
def mosquitto(tmp_path):
    """A mosquitto broker running on 127.0.0.1 (testkit.analytics_helpers.Broker); stopped after the test."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (apt-get install mosquitto)")
    broker = Broker(tmp_path).start()
    yield broker
    broker.stop()
