"""`bisenet serve-triton` start-up checks that need no running server: taken ports, a missing
server venv, a sidecar that disagrees with its graph and a --max-batch the graph cannot serve are
one line before anything starts, and the CPU-only noise of tritonserver's log is not relayed."""
import io
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from testkit.app_helpers import REPO, free_port, tiny_onnx
from testkit.app_process import bisenet, one_line_error


def test_a_taken_port_is_one_line_before_the_server_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "app.cli", "serve-triton", "--onnx", str(tiny_onnx()),
                               "--http-port", str(free_port()), "--grpc-port", str(port),
                               "--metrics-port", str(free_port())],
                              cwd=REPO, capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"--grpc-port {port}" in lines[0] and "is taken" in lines[0]


def test_cpu_only_startup_noise_is_dropped_and_the_rest_relayed():
    from engines.triton_serve import relay_log

    log = io.StringIO(
        'W1203 08:46:25.701494 23487 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory, '
        'pinned memory pool will not be available: CUDA driver version is insufficient for CUDA runtime version"\n'
        'E1203 08:46:25.701808 23487 server.cc:241] "CudaDriverHelper has not been initialized."\n'
        'E1203 08:46:52.317663 24378 main.cc:245] "failed to start GRPC service: Unavailable"\n')
    out = io.StringIO()
    relay_log(log, out)
    assert out.getvalue().splitlines() == ['E1203 08:46:52.317663 24378 main.cc:245] "failed to start GRPC service: '
                                           'Unavailable"']


def test_serve_triton_refuses_bad_inputs(tmp_path):
    model = tiny_onnx()
    err = one_line_error(bisenet("serve-triton", "--onnx", model, "--server-env", tmp_path / "nothing"))
    assert "scripts/setup_triton.sh" in err
    # A sidecar that disagrees with the graph: refused before anything is served.
    liar = tmp_path / "liar.onnx"
    shutil.copyfile(model, liar)
    side = json.loads(Path(str(model) + ".json").read_text())
    side["input_shape"] = [1, 3, 64, 64]
    Path(str(liar) + ".json").write_text(json.dumps(side))
    err = one_line_error(bisenet("serve-triton", "--onnx", liar))
    assert "64x96" in err and "64x64" in err


def test_serve_triton_max_batch_zero_needs_a_fixed_batch():
    """--max-batch 0 serves the graph's own fixed batch: a dynamic-batch export has none."""
    err = one_line_error(bisenet("serve-triton", "--onnx", tiny_onnx(dynamic_batch=True), "--max-batch", "0"))
    assert "dynamic batch dimension" in err
    err = one_line_error(bisenet("serve-triton", "--onnx", tiny_onnx(), "--max-batch", "-1"))
    assert "--max-batch -1" in err
