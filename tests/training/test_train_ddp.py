"""torchrun with 2 CPU processes (gloo DDP): both ranks end with identical weights."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from testkit.training_data import make_train_config

REPO = Path(__file__).resolve().parents[2]
WORKER = """
import os, sys
sys.path.insert(0, {repo!r})
import torch
from training.train import load_train_config, train
result = train(load_train_config({cfg!r}), {work!r}, progress=False, device="cpu")
torch.save(result["model"].state_dict(), os.path.join({work!r}, "rank%s.pt" % os.environ["RANK"]))
"""


def test_two_process_gloo_ddp_ends_with_identical_weights(tmp_path):
    cfg = make_train_config(tmp_path, iterations=3, checkpoint_interval=3, batch_size=2)
    work = tmp_path / "run"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=str(REPO), cfg=str(cfg), work=str(work)))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # --standalone: the rendezvous store binds port 0 itself. Picking a free port first and handing
    # it over raced with other sockets (CI once got EADDRINUSE on the picked port).
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(work / "rank0.pt", weights_only=True)
    w1 = torch.load(work / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # The ranks trained: weights moved away from the saved start, and rank 0 wrote the checkpoint.
    ckpt = torch.load(work / "latest.pth", weights_only=True)
    assert ckpt["iteration"] == 3
    for k in w0:
        assert torch.equal(ckpt["state_dict"][k], w0[k]), k
    assert (work / "log.jsonl").is_file() and not (work / "rank1").exists()


def test_ctrl_c_under_the_launcher_saves_and_exits_130_without_torchrun_traceback(tmp_path):
    """`python -m training.launch` (torchrun with the project's exit codes), as docs/training.md
    runs it: Ctrl-C (the whole process group) -> latest.pth, the stop line, exit 130, no traceback."""
    import json
    import signal
    import time

    cfg = make_train_config(tmp_path, iterations=100000, checkpoint_interval=100000)
    work = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "training.launch", "--standalone", "--nproc_per_node", "2",
                             "-m", "training.train", "--config", str(cfg), "--work-dir", str(work), "--device", "cpu"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    log = work / "log.jsonl"
    deadline = time.monotonic() + 120
    while not (log.is_file() and any(json.loads(line).get("mode") == "train" for line in log.read_text().splitlines())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)            # Ctrl-C in the terminal
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]
    assert "training.launch: stopped by SIGINT" in err
    reached = torch.load(work / "latest.pth", weights_only=True)["iteration"]
    assert f"stopped by SIGINT at iteration {reached} of 100000: {work / 'latest.pth'} holds it; " \
           "continue with --resume" in (out + err)
