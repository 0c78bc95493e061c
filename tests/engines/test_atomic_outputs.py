"""Outputs that must land whole or not at all: a model and its sidecar together (a signal
between the two waits for both), and a Triton repository under a file-size limit (the old
repository stays, nothing truncated is left)."""
import resource
import subprocess
import sys
import textwrap

from testkit.app_helpers import REPO, tiny_onnx


def test_sigterm_between_a_model_and_its_sidecar_waits_for_both(tmp_path):
    """atomic_path's `then` (export writes the sidecar there) runs with SIGTERM deferred: the
    signal sent while it runs still ends the process (exit 143), after both files are there."""
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from app.cli import remove_temp_files_on_sigterm
        from core.files import atomic_path
        remove_temp_files_on_sigterm()
        out = {str(tmp_path / 'm.onnx')!r}

        def sidecar():
            os.kill(os.getpid(), signal.SIGTERM)   # arrives between the model and its sidecar
            time.sleep(0.2)
            open(out + ".json", "w").write("{{}}")

        with atomic_path(out, then=sidecar) as tmp:
            open(tmp, "w").write("model")
        print("not reached")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert "not reached" not in proc.stdout
    assert (tmp_path / "m.onnx").read_text() == "model" and (tmp_path / "m.onnx.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]


def test_triton_repo_under_a_file_size_limit_keeps_the_old_repository(tmp_path):
    model = tiny_onnx()
    out = tmp_path / "repo"
    cmd = [sys.executable, "-m", "app.cli", "triton-repo", "--onnx", str(model), "--name", "bisenet", "-o", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, timeout=120)
    config = (out / "bisenet" / "config.pbtxt").read_text()
    size = (out / "bisenet" / "1" / "model.onnx").stat().st_size

    def limit():   # a file-size limit below the model's size: its copy fails half-way
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, preexec_fn=limit)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cannot write" in lines[0], proc.stderr
    assert (out / "bisenet" / "config.pbtxt").read_text() == config
    assert (out / "bisenet" / "1" / "model.onnx").stat().st_size == size
    assert sorted(p.name for p in out.iterdir()) == ["bisenet"]   # no staging folder left
