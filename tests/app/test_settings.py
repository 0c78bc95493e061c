"""`bisenet run`'s settings (app/settings.py): one declaration per option makes its flag, its
preset key and (per-camera options) its `cameras:` key; bad values are one line naming the flag
or the file and key. Also the three tables (backends, sources, sinks) and the engine contract."""
from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest

from app import settings
from app.settings import CameraSettings, OPTIONS, RunSettings, ServerSettings, build
from core.errors import InputError


def parse(argv: list) -> dict:
    """argv -> the options given (what app/run.py's resolve hands to build)."""
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    given = vars(p.parse_args(argv))
    return {k: v for k, v in given.items() if k in OPTIONS}


def test_every_option_is_a_flag_and_a_preset_key_and_per_camera_ones_a_cameras_key(tmp_path):
    p = argparse.ArgumentParser()
    settings.add_arguments(p)
    flags = {opt for a in p._actions for opt in a.option_strings}
    for name, section in OPTIONS.items():
        assert "--" + name.replace("_", "-") in flags, name
        assert section.model_fields[name].description, f"{name} has no help"
    per_camera = {n for n, section in OPTIONS.items() if section is CameraSettings}
    assert per_camera == {"source", "output", "realtime", "loop", "max_frames", "camera_size", "camera_fps",
                          "source_timeout", "rtsp_transport", "fps", "bitrate", "save_labels", "segment_s",
                          "retain_days", "retain_gb", "hwaccel", "detect_fps", "skip_frame", "decoder_scale",
                          "overlay_picture"}

    # One option, three ways in: the same typed value.
    preset = tmp_path / "p.yaml"
    preset.write_text("source: a.mp4\ncamera-fps: 12\n")
    assert build(parse(["--source", "a.mp4", "--camera-fps", "12"])).cameras[0].camera_fps == 12.0
    assert build({}, str(preset)).cameras[0].camera_fps == 12.0
    preset.write_text("cameras:\n  - {name: front, source: a.mp4, camera_fps: 12}\n")
    assert build({}, str(preset)).cameras[0].camera_fps == 12.0


def test_command_line_beats_preset_beats_defaults(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: m.onnx\nalpha: 0.3\nqueue-size: 8\nmax-frames: 3\nbitrate: 2M\n"
                      "cameras:\n  - {name: front, source: a.mp4}\n  - {name: back, source: b.mp4, max-frames: 2}\n")
    s = build(parse(["--alpha", "0.7", "--metrics-port", "127.0.0.1:9100", "--no-auth"]), str(preset))
    assert isinstance(s, RunSettings) and isinstance(s.server, ServerSettings)
    assert (s.model, s.alpha, s.queue_size, s.mode, s.engine.triton_in_flight) == ("m.onnx", 0.7, 8, "overlay", 2)
    assert [(c.name, c.source, c.max_frames, c.bitrate) for c in s.cameras] == \
        [("front", "a.mp4", 3, 2_000_000), ("back", "b.mp4", 2, 2_000_000)]
    assert s.server.metrics_port == ("127.0.0.1", 9100) and s.server.auth is False and s.server.max_clients == 16
    # --source on the command line replaces the preset's cameras; several sources: cam0, cam1
    s = build(parse(["--source", "x.mp4", "--source", "0", "--output", "out_{camera}/"]), str(preset))
    assert [(c.name, c.source, c.output) for c in s.cameras] == \
        [("cam0", "x.mp4", ["out_cam0/"]), ("cam1", "0", ["out_cam1/"])]
    assert build({}).cameras == [] and build({}).cameras is not RunSettings().cameras


BAD = [
    (["--source", "a.mp4", "--camera-fps", "0"], None, "--camera-fps 0.0 is out of range"),
    (["--source", "a.mp4", "--allowed-hosts", ","], None, None),   # empty list: fine
    (["--source", "a.mp4"], "cameras:\n  - {source: a.mp4, camera-fps: -1}\n", "cameras[0]: camera-fps -1 is out"),
    ([], "cameras:\n  - {source: a.mp4}\n  - {source: b.mp4, name: cam0}\n", "camera names must differ: cam0, cam0"),
    ([], "cameras:\n  - {source: a.mp4, loop: 3}\n", "cameras[0]: loop: expected true or false, got 3"),
    ([], "cameras:\n  - {source: [a.mp4, b.mp4]}\n", "cameras[0]: give it exactly one source"),
    ([], "source: a.mp4\nrtsp-transport: quic\n", "rtsp-transport: 'quic' is not one of tcp, udp, auto"),
    ([], "source: a.mp4\nmetrics-port: 70000\n", "metrics-port 70000: expected PORT or HOST:PORT"),
    ([], "source: a.mp4\nmodel: [a, b]\n", "model: expected a single value, got ['a', 'b']"),
    ([], "source: a.mp4\ncamera-size: 10x0\n", "camera-size 10x0: expected WIDTHxHEIGHT"),
]


@pytest.mark.parametrize("argv,preset_text,expect", BAD, ids=[str(c[2]) for c in BAD])
def test_bad_values_are_one_line_naming_the_flag_or_key(argv, preset_text, expect, tmp_path):
    preset = None
    if preset_text is not None:
        preset = tmp_path / "p.yaml"
        preset.write_text(preset_text)
    if expect is None:
        build(parse(argv), preset and str(preset))
        return
    with pytest.raises(InputError) as e:
        build(parse(argv), preset and str(preset))
    assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)
    if preset is not None and not expect.startswith("camera names"):   # names: across the whole run
        assert str(preset) in str(e.value)


def test_server_options_token_from_flag_or_environment(monkeypatch):
    from app.server import ServerOptions

    monkeypatch.delenv("BISENET_AUTH_TOKEN", raising=False)
    s = ServerSettings.of(SimpleNamespace(auth_token="long-enough-token", allowed_hosts="Cam.Local, x", auth=False))
    options = s.server_options()
    assert isinstance(options, ServerOptions)
    assert (options.auth_token, options.no_auth, options.allowed_hosts, options.max_clients) == \
        ("long-enough-token", True, ("cam.local", "x"), 16)
    monkeypatch.setenv("BISENET_AUTH_TOKEN", "short")
    with pytest.raises(InputError, match="--auth-token / BISENET_AUTH_TOKEN: use at least 8"):
        ServerSettings().server_options()
    with pytest.raises(InputError, match="--tls-cert and --tls-key go together"):
        ServerSettings(tls_cert="c.pem").server_options()


def test_settings_from_a_plain_namespace_are_checked():
    cam = CameraSettings.of(SimpleNamespace(bitrate="800k", loop=True))
    assert (cam.bitrate, cam.loop, cam.source_timeout, cam.output) == (800_000, True, 10.0, ["display"])
    assert CameraSettings.of(None) == CameraSettings() and CameraSettings.of(cam) is cam
    with pytest.raises(InputError, match="^--bitrate 'fast' is not a number"):
        CameraSettings.of(argparse.Namespace(bitrate="fast"))


def test_the_tables_of_sources_sinks_and_backends(tmp_path):
    from app.sinks import SINKS, sink_kind
    from app.sources import SOURCES, source_kind
    from engines.load import BACKENDS, EngineOptions, backend_for

    (tmp_path / "imgs").mkdir()
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "a.mp4").write_bytes(b"")
    kinds = {"0": "camera", "/dev/video2": "camera", "rtsp://h/x": "rtsp", "rtsps://h/x": "rtsps",
             "https://h/x.mjpg": "https", "csi://0": "csi", "gst:videotestsrc ! appsink": "gst",
             str(tmp_path / "imgs"): "folder", str(tmp_path / "*.png"): "glob", str(tmp_path / "a.png"): "image",
             str(tmp_path / "a.mp4"): "video"}
    assert {spec: source_kind(spec) for spec in kinds} == kinds and set(kinds.values()) <= set(SOURCES)
    outputs = {"display": "display", "null": "null", "http://@:8080": "http", "rtsp://@:8554/x": "rtsp",
               "out.mkv": "video", "frames/": "folder"}
    assert {spec: sink_kind(spec) for spec in outputs} == outputs and set(outputs.values()) == set(SINKS)
    models = {"grpc://127.0.0.1:8001/m": "triton", "m.engine": "tensorrt", "bisenetv1_r18": "pytorch",
              str(tmp_path / "m.onnx"): "onnxruntime"}
    assert {m: backend_for(m, EngineOptions()) for m in models} == models and set(models.values()) < set(BACKENDS)
    assert backend_for(str(tmp_path / "m.onnx"), EngineOptions(precision="bf16")) == "openvino"


def test_the_engine_contract_has_a_default_for_every_capability():
    from engines.base import Engine, ModelInfo, as_engine

    info = ModelInfo("m", ["a", "b"], np.zeros((2, 3), np.uint8), np.zeros(3), np.ones(3), (8, 8))

    class Minimal(Engine):
        def __init__(self):
            self.info = info

        def infer(self, batch):
            return np.zeros((len(batch), 8, 8), np.int32)

    e = Minimal()
    assert as_engine(e) is e
    assert (e.fused, e.asynchronous, e.input_dtype, e.batch_limit(3), e.counters()) == (False, False, np.float32, 1, {})
    assert e.labels_of(np.ones(2)).tolist() == [1, 1]
    with pytest.raises(NotImplementedError):
        e.run_fused(np.zeros((8, 8, 3), np.uint8))

    # An engine object written without the base class: its own methods, the defaults for the rest.
    duck = SimpleNamespace(info=info, infer=e.infer, run_fused=lambda f, alpha, mode: f + 1)
    adopted = as_engine(duck)
    assert adopted.fused and not adopted.asynchronous and adopted.batch_limit(4) == 1
    assert [int(o[0, 0, 0]) for o in adopted.run_fused_frames([np.zeros((2, 2, 3))] * 2)] == [1, 1]
