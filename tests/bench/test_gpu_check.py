"""bench/gpu_check.py, the device check: its plan, its skip logic and its exit status.

Here there is no GPU: the real script runs, every step reports why it did not run, it writes
its JSON and table, and it exits non-zero saying "nothing ran". The plan and exit rules are
checked with hand-written machine facts (need -> None when present, else the reason).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
gc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gc)

EVERYTHING = {need: None for _, needs, _ in gc.STEPS.values() for need in needs}


def has_gpu() -> bool:
    try:
        import torch
        if torch.cuda.is_available():
            return True
    except ImportError:
        pass
    return importlib.util.find_spec("cupy") is not None


def reasons(facts, names=tuple(gc.STEPS)) -> dict:
    return {name: reason for name, _, reason in gc.plan_steps(facts, names)}


def test_a_full_gpu_box_runs_every_step():
    assert reasons(EVERYTHING) == {name: None for name in gc.STEPS}


def test_without_cupy_the_kernel_engine_and_app_steps_say_so():
    got = reasons({**EVERYTHING, "cupy": "cupy not importable"})
    assert {n for n, r in got.items() if r} == {"kernels-cupy", "cuda-engine", "run-camera"}
    assert got["cuda-engine"] == "cupy not importable"


def test_an_unported_device_flag_blocks_only_the_app_step():
    got = reasons({**EVERYTHING, "run_camera_device": "run_camera.py has no --device flag"})
    assert [n for n, r in got.items() if r] == ["run-camera"]


def test_without_the_flag_the_default_subset_runs_in_order():
    plan = gc.plan_steps(EVERYTHING, gc.DEFAULT_STEPS)
    assert [name for name, _, _ in plan] == list(gc.DEFAULT_STEPS)
    assert [required for _, required, _ in plan] == [True, False, True, False]


def result(name, status, required=True, reason=None):
    return {"name": name, "required": required, "status": status, "reason": reason, "seconds": 0.0}


@pytest.mark.parametrize("results,code,words", [
    ([result("kernels-cupy", "not run", reason="no cupy"), result("tensorrt", "not run", False, "no trt")], 1,
     "nothing ran: kernels-cupy: no cupy"),
    ([result("kernels-cupy", "passed"), result("tensorrt", "not run", False, "no trt")], 0, "passed"),
    ([result("kernels-cupy", "passed"), result("tensorrt", "failed", False, "boom")], 1, "failed: tensorrt"),
    ([result("kernels-cupy", "passed"), result("run-camera", "not run", reason="no flag")], 1,
     "did not run: run-camera"),
])
def test_exit_status(results, code, words):
    got_code, summary = gc.exit_status(results)
    assert got_code == code and words in summary


def test_a_step_that_finds_nothing_to_run_on_is_not_run_not_failed(tmp_path):
    """The runner itself: the CuPy kernel step forced on this machine reports why, as not run."""
    if has_gpu():
        pytest.skip("a GPU stack is here: the step would run")
    args = gc.argparse.Namespace(data=None, checkpoint=None, repeat=1, size="64x64", frames=3, pycuda_sdist=None)
    [r] = gc.run_steps(gc.Context(args), [("kernels-cupy", True, None)])
    assert r["status"] == "not run" and "CuPy" in r["reason"]


@pytest.mark.skipif(has_gpu(), reason="a GPU stack is here: the device check would run")
def test_on_this_machine_nothing_runs_and_it_exits_non_zero(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--all", "--out", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "gpu_check: nothing ran" in r.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["name"] for s in report["steps"]] == list(gc.STEPS)
    assert all(s["status"] == "not run" and s["reason"] for s in report["steps"])
    assert report["exit_code"] == 1 and report["rows"] == []
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| cuda-engine | yes | not run |" in table and "Result: nothing ran" in table


def test_an_unknown_step_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--only", "kernels,warp-drive",
                        "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown step kernels, warp-drive" in r.stderr


def test_the_carry_fits_the_limit_and_is_what_the_check_reads(tmp_path):
    data = gc.find_shared("data")
    models = gc.find_shared("models")
    if data is None or models is None or not (models / gc.CHECKPOINT_NAME).is_file():
        pytest.skip("../shared/data or ../shared/models/camvid_r18-d32_cpu.pth not found")
    carry = tmp_path / "carry"
    assert gc.prepare_carry(carry, data, str(models / gc.CHECKPOINT_NAME), 3, None) == 0
    size = sum(p.stat().st_size for p in carry.rglob("*") if p.is_file())
    assert size < gc.CARRY_LIMIT_MIB * 2 ** 20
    args = gc.argparse.Namespace(data=str(carry / "data"), checkpoint=str(carry / gc.CHECKPOINT_NAME),
                                 pycuda_sdist=None)
    facts = gc.probe_facts(args)
    assert facts["data"] is None and facts["checkpoint"] is None
