"""Exact resume, checkpoint contents, the schedule and the sample stream (tiny real data, CPU)."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from training.train import SampleStream, TrainConfig, load_train_config, lr_factor, train
from testkit.training_data import make_train_config


def train_losses(work_dir):
    records = [json.loads(line) for line in open(work_dir / "log.jsonl")]
    return [(r["iter"], r["loss"]) for r in records if r["mode"] == "train"]


def test_resume_continues_exactly(tmp_path):
    tc = load_train_config(make_train_config(tmp_path, eval_interval=3))
    torch.set_num_threads(1)
    full = train(tc, tmp_path / "full", progress=False, device="cpu")
    train(tc, tmp_path / "split", stop_at=3, progress=False, device="cpu")
    resumed = train(tc, tmp_path / "split", resume="auto", progress=False, device="cpu")

    a, b = train_losses(tmp_path / "full"), train_losses(tmp_path / "split")
    assert [i for i, _ in a] == [1, 2, 3, 4, 5, 6] == [i for i, _ in b]
    assert a == b                                  # bit-identical losses after the resume
    for k, v in full["model"].state_dict().items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k
    assert full["best_miou"] == resumed["best_miou"]


def test_checkpoint_holds_everything_export_needs(tmp_path):
    tc = load_train_config(make_train_config(tmp_path, iterations=2, eval_interval=2, checkpoint_interval=2))
    train(tc, tmp_path / "run", progress=False, device="cpu")
    for name in ("latest.pth", "best.pth"):
        ckpt = torch.load(tmp_path / "run" / name, map_location="cpu", weights_only=True)
        assert {"state_dict", "meta", "optimizer", "scheduler", "iteration", "rng"} <= set(ckpt)
        assert ckpt["iteration"] == 2 and ckpt["meta"]["iteration"] == 2
        mc = ckpt["meta"]["model_config"]
        assert mc["num_classes"] == 3 and mc["class_names"] == ["ground", "object", "sky"]
        assert len(mc["palette"]) == 3 and len(mc["mean"]) == 3 and len(mc["std"]) == 3
        assert "auxiliary_head.1.conv_seg.weight" in ckpt["state_dict"]
        assert "backbone.context_path.backbone.layer1.0.conv1.weight" in ckpt["state_dict"]
        assert isinstance(ckpt["meta"]["miou"], float)
    records = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    assert [r["iter"] for r in records if r["mode"] == "val"] == [2]


def test_warmup_then_poly_schedule():
    args = dict(base_lr=0.01, iterations=100, warmup_iters=10, warmup_ratio=0.1, poly_power=0.9, min_lr=1e-4)
    assert lr_factor(0, **args) == pytest.approx(0.1)
    assert lr_factor(5, **args) == pytest.approx(0.55)
    assert lr_factor(10, **args) == pytest.approx(1.0)
    assert lr_factor(100, **args) * 0.01 == pytest.approx(1e-4)
    mid = (0.01 - 1e-4) * (1 - 45 / 90) ** 0.9 + 1e-4
    assert lr_factor(55, **args) * 0.01 == pytest.approx(mid)


def test_sample_stream_splits_the_global_order_between_ranks():
    single = list(itertools.islice(SampleStream(5, seed=3), 20))
    r0 = list(itertools.islice(SampleStream(5, seed=3, rank=0, world=2), 10))
    r1 = list(itertools.islice(SampleStream(5, seed=3, rank=1, world=2), 10))
    assert [x for pair in zip(r0, r1) for x in pair] == single
    assert sorted(i for i, _ in single[:5]) == [0, 1, 2, 3, 4]      # each epoch is a permutation
    resumed = list(itertools.islice(SampleStream(5, seed=3, start=8), 12))
    assert resumed == single[8:]


def test_unknown_train_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ndataset: d\nitersations: 5\n")
    with pytest.raises(ValueError, match="itersations"):
        load_train_config(bad)


SAVER = """
import sys, torch
from training.checkpoints import save_checkpoint_atomic
path = sys.argv[1]
i = 0
while True:
    save_checkpoint_atomic({"iteration": i, "w": torch.full((4_000_000,), float(i))}, path)
    print(i, flush=True)
    i += 1
"""


def test_kill_during_save_leaves_a_readable_latest(tmp_path):
    latest = tmp_path / "latest.pth"
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1")
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(latest)], stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip().isdigit()        # one save completed
        time.sleep(0.15)                                        # then kill it, most likely mid-save
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(latest, weights_only=True)
        assert torch.all(ckpt["w"] == float(ckpt["iteration"]))
    assert not [p for p in tmp_path.iterdir() if p.name != "latest.pth" and not p.name.startswith(".")]


def test_train_config_defaults_come_from_the_model_recipe(tmp_path):
    from core.model_config import load_model_config
    cfg = load_model_config("bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024")
    r = TrainConfig(model="x", dataset="y", lr=0.5).recipe(cfg)
    assert r["lr"] == 0.5 and r["iterations"] == 160000 and r["warmup_iters"] == 1000


def test_finetune_on_own_classes_from_a_checkpoint_with_other_classes(tmp_path):
    import yaml

    from core.model_config import MODELS_DIR, load_model_config
    from training.model import BiSeNetV1
    from training.train import load_for_finetune

    camvid = load_model_config(MODELS_DIR / "bisenetv1_r18-d32_camvid-360x480.yaml")   # 11 classes
    source = tmp_path / "camvid11.pth"
    torch.save({"state_dict": BiSeNetV1(camvid).state_dict(), "meta": {}}, source)
    cfg = make_train_config(tmp_path, iterations=2, checkpoint_interval=2)
    tc = load_train_config(cfg)
    tc.model = str(MODELS_DIR / "bisenetv1_r18-d32_camvid-360x480.yaml")
    tc.load_from = str(source)
    train(tc, tmp_path / "ft", progress=False, device="cpu")
    derived = yaml.safe_load(open(tmp_path / "ft" / "model.yaml"))
    assert derived["num_classes"] == 3 and derived["class_names"] == ["ground", "object", "sky"]
    assert derived["name"] == "bisenetv1_r18-d32_camvid-360x480_tiny"
    three = load_model_config(tmp_path / "ft" / "model.yaml")
    skipped = load_for_finetune(BiSeNetV1(three), source)
    assert skipped == sorted(f"{h}.conv_seg.{p}" for h in ("auxiliary_head.0", "auxiliary_head.1", "decode_head")
                             for p in ("bias", "weight"))


def start_training(args, env_extra=None):
    """`bisenet train ...` in its own process group (Ctrl-C in a terminal reaches the loader
    workers too); stderr goes to a file so the pipe never fills."""
    env = dict(os.environ, PYTHONPATH=os.getcwd(), OMP_NUM_THREADS="1", **(env_extra or {}))
    return subprocess.Popen([sys.executable, "-m", "app.cli", "train", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_iterations(work, proc, n):
    while len(train_losses(work) if (work / "log.jsonl").is_file() else []) < n:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_saves_the_iteration_reached_and_resume_ends_where_an_uninterrupted_run_does(tmp_path, signum):
    cfg = make_train_config(tmp_path, iterations=12, checkpoint_interval=100, workers=2)
    work = tmp_path / "stopped"
    proc = start_training(["--config", cfg, "--work-dir", work, "--device", "cpu"])
    wait_for_iterations(work, proc, 3)
    os.killpg(proc.pid, signum)                   # like Ctrl-C: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    reached = torch.load(work / "latest.pth", weights_only=True)["iteration"]
    assert 3 <= reached < 12
    name = signal.Signals(signum).name
    assert f"stopped by {name} at iteration {reached} of 12: {work / 'latest.pth'} holds it; " \
           "continue with --resume" in err.splitlines()
    assert [i for i, _ in train_losses(work)] == list(range(1, reached + 1))

    tc = load_train_config(cfg)
    torch.set_num_threads(1)
    resumed = train(tc, work, resume="auto", progress=False, device="cpu")
    full = train(tc, tmp_path / "full", progress=False, device="cpu")
    assert train_losses(work) == train_losses(tmp_path / "full")      # bit-identical losses
    for k, v in full["model"].state_dict().items():
        assert torch.equal(v, resumed["model"].state_dict()[k]), k      # and weights
