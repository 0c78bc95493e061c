"""Checkpoint loading (strict, weights_only) and download against a real HTTP server on 127.0.0.1."""
import hashlib
import http.server
import os
import socket
import threading

import pytest
import torch

from core.model_config import load_model_config
from testkit.helpers import official_style_checkpoint
from training.checkpoints import CheckpointError, download_checkpoint, load_checkpoint, load_weights
from training.model import BiSeNetV1

R18 = "bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024"


@pytest.fixture(scope="module")
def cfg():
    return load_model_config(R18)


def test_official_layout_loads_strictly(cfg, tmp_path):
    ref = official_style_checkpoint(cfg, tmp_path / "official.pth")
    model = BiSeNetV1(cfg)
    meta = load_weights(model, tmp_path / "official.pth", cfg)
    assert meta["mmseg_version"] == "0.18.0"
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    keys = set(torch.load(tmp_path / "official.pth", weights_only=True)["state_dict"])
    assert "backbone.context_path.backbone.layer1.0.conv1.weight" in keys
    assert "decode_head.conv_seg.weight" in keys and "auxiliary_head.1.conv_seg.bias" in keys
    # export drops the auxiliary heads: they are not 'unexpected' for a model without them
    load_weights(BiSeNetV1(cfg, with_aux=False), tmp_path / "official.pth", cfg)


def test_mismatch_lists_keys_and_names_config(cfg, tmp_path):
    sd = BiSeNetV1(cfg).state_dict()
    sd.pop("decode_head.conv_seg.bias")
    sd["backbone.extra.weight"] = torch.zeros(1)
    sd["decode_head.conv_seg.weight"] = torch.zeros(171, 256, 1, 1)
    torch.save({"meta": {}, "state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        load_weights(BiSeNetV1(cfg), tmp_path / "bad.pth", cfg)
    msg = str(e.value)
    assert "\n" not in msg
    assert "1 missing [decode_head.conv_seg.bias]" in msg
    assert "1 unexpected [backbone.extra.weight]" in msg
    assert "decode_head.conv_seg.weight (171, 256, 1, 1) vs (19, 256, 1, 1)" in msg
    assert cfg.source in msg


def test_coco_checkpoint_into_cityscapes_config_is_refused(cfg, tmp_path):
    coco = load_model_config("bisenetv1_r18-d32_4xb4-160k_coco-stuff164k-512x512")
    official_style_checkpoint(coco, tmp_path / "coco.pth")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tmp_path / "coco.pth", cfg)


def test_ddp_prefix_and_own_format(cfg, tmp_path):
    model = BiSeNetV1(cfg)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
                "meta": {"model_config": cfg.to_dict(), "iteration": 5}}, tmp_path / "own.pth")
    assert set(load_checkpoint(tmp_path / "own.pth", cfg)) == set(model.state_dict())


class Evil:
    """Any non-allowlisted object: weights_only loading must refuse to unpickle it."""


def test_unsafe_pickle_is_refused(cfg, tmp_path):
    torch.save({"state_dict": {}, "meta": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="safely"):
        load_checkpoint(tmp_path / "evil.pth", cfg)
    (tmp_path / "trunc.pth").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "trunc.pth", cfg)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pth", cfg)


# ---------------------------------------------------------------- download from 127.0.0.1
class Server:
    """A real HTTP server on 127.0.0.1 serving a dict of path -> bytes."""

    def __init__(self, files):
        files_ = files

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = files_.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def named(payload: bytes, stem="bisenetv1_r18_20210922_172239"):
    return f"/{stem}-{hashlib.sha256(payload).hexdigest()[:8]}.pth"


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_download_good_file_then_reuse(tmp_path):
    payload = b"checkpoint bytes " * 1000
    path = named(payload)
    server = Server({path: payload})
    try:
        got = download_checkpoint(server.url(path), tmp_path, progress=False)
        assert got.read_bytes() == payload and got.parent == tmp_path
        assert got.stat().st_mode & 0o777 == 0o666 & ~current_umask()   # not mkstemp's 0600
    finally:
        server.close()
    # server gone: the verified cached file is reused
    again = download_checkpoint(server.url(path), tmp_path, progress=False)
    assert again == got
    assert [p.name for p in tmp_path.iterdir()] == [got.name]


def test_download_corrupt_file_is_never_used(tmp_path):
    payload = b"the real weights"
    path = named(payload)
    server = Server({path: b"tampered weights"})
    try:
        with pytest.raises(CheckpointError, match="corrupt.*--checkpoint PATH"):
            download_checkpoint(server.url(path), tmp_path, progress=False)
    finally:
        server.close()
    assert list(tmp_path.iterdir()) == []   # no file, no half-written temp left


def test_download_server_down_says_pass_checkpoint(tmp_path):
    with socket.socket() as s:          # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CheckpointError, match="--checkpoint PATH") as e:
        download_checkpoint(f"http://127.0.0.1:{port}/x-0123abcd.pth", tmp_path, timeout=5, progress=False)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_download_then_load_official_checkpoint(cfg, tmp_path):
    official_style_checkpoint(cfg, tmp_path / "src.pth")
    payload = (tmp_path / "src.pth").read_bytes()
    path = named(payload)
    server = Server({path: payload})
    try:
        got = download_checkpoint(server.url(path), tmp_path / "cache", progress=False)
    finally:
        server.close()
    load_weights(BiSeNetV1(cfg), got, cfg)
