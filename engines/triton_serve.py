"""`bisenet serve-triton`: a real Triton Inference Server for an .onnx, without Docker.

It runs the `tritonserver` binary that the `nvidia-pytriton` wheel bundles, with Triton's
Python backend: the model repository is the one `bisenet triton-repo` writes (same name,
same config and metadata parameters, dynamic batching), except that the backend is
"python" and 1/model.py (engines/triton_python_model.py) runs the .onnx with ONNX Runtime
or OpenVINO (--backend), because the wheel carries no onnxruntime or openvino backend.

The server needs its own environment (scripts/setup_triton.sh makes `.venv-triton`):
nvidia-pytriton wants numpy < 2, and its Python-backend stub embeds the system's
libpython, so that environment must be built from the system Python (/usr/bin/python3),
not from another build of the same version. This command itself runs anywhere; it looks
for that environment in --server-env, $BISENET_TRITON_ENV or ./.venv-triton.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from core.errors import InputError, SetupError
from core.validate import Number
from engines.triton_repo import DEFAULT_QUEUE_DELAY_US, write_repository

HELP = "serve an .onnx on a real Triton Inference Server (nvidia-pytriton's tritonserver, Python backend)"
EXAMPLE = ("bisenet serve-triton --onnx artifacts/camvid.onnx --name bisenet --grpc-port 8001\n"
           "  python run_camera.py --source ../shared/data/samples/camvid_0016E5_15fps.mp4 "
           "--model grpc://127.0.0.1:8001/bisenet --output out.mp4")
REPO_ROOT = Path(__file__).resolve().parent.parent
SETUP_HINT = ("run scripts/setup_triton.sh (makes .venv-triton from /usr/bin/python3 with nvidia-pytriton, "
              "onnxruntime and openvino) or pass --server-env to such a venv")


class ServerEnv:
    """Paths inside the server environment: the tritonserver binary, the Python backend,
    the stub for that environment's Python version and the wheel's shared libraries."""

    def __init__(self, root: Path):
        self.root = root
        found = sorted(root.glob("lib/python3.*/site-packages/pytriton/tritonserver/bin/tritonserver"))
        if not (root / "bin" / "python3").exists() or not found:
            raise SetupError(f"no Triton server environment at {root}: {SETUP_HINT}")
        self.server = found[-1]
        dist = self.server.parent.parent
        self.site = dist.parent.parent
        self.python_version = self.site.parent.name.replace("python", "")   # lib/python3.11 -> 3.11
        self.backend = dist / "backends" / "python"
        self.stub = dist / "python_backend_stubs" / self.python_version / "triton_python_backend_stub"
        self.libs = self.site / "nvidia_pytriton.libs"
        if not self.stub.is_file():
            raise SetupError(f"{root}: nvidia-pytriton has no Python-backend stub for Python {self.python_version}; "
                               f"{SETUP_HINT}")

    def require(self, runtime: str) -> None:
        """The package model.py imports for `runtime` must be in this environment."""
        if not (self.site / runtime / "__init__.py").is_file():
            raise SetupError(f"{self.root}: {runtime} is not installed there; {SETUP_HINT}")

    def backend_dir(self, work: Path) -> Path:
        """Triton wants the stub inside backends/python/; the wheel keeps one per Python version."""
        target = work / "backends" / "python"
        target.mkdir(parents=True, exist_ok=True)
        for f in ("libtriton_python.so", "triton_python_backend_utils.py"):
            shutil.copyfile(self.backend / f, target / f)
        shutil.copyfile(self.stub, target / "triton_python_backend_stub")
        (target / "triton_python_backend_stub").chmod(0o755)
        return work / "backends"

    def environ(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONHOME", "PYTHONPATH", "VIRTUAL_ENV")}
        # The stub finds its Python through PATH: this venv's python3 -> the system libpython's own stdlib.
        env["PATH"] = f"{self.root / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (str(self.libs), env.get("LD_LIBRARY_PATH")) if p)
        return env


def find_server_env(flag: str | None) -> ServerEnv:
    if flag:
        return ServerEnv(Path(flag).resolve())
    if os.environ.get("BISENET_TRITON_ENV"):
        return ServerEnv(Path(os.environ["BISENET_TRITON_ENV"]).resolve())
    return ServerEnv(REPO_ROOT / ".venv-triton")


def server_command(env: ServerEnv, repo: Path, backends: Path, args) -> list:
    return [str(env.server), f"--model-repository={repo}", f"--backend-directory={backends}",
            f"--http-address={args.address}", f"--http-port={args.http_port}",
            f"--grpc-address={args.address}", f"--grpc-port={args.grpc_port}",
            f"--metrics-address={args.address}", f"--metrics-port={args.metrics_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false", "--strict-readiness=true",
            "--exit-on-error=true", "--exit-timeout-secs=5", "--disable-auto-complete-config",
            f"--log-verbose={1 if args.verbose else 0}", "--log-info=false" if not args.verbose else "--log-info=true"]


def _die_with_parent():
    """Child side: SIGTERM the server when this process dies, even by SIGKILL (Linux prctl)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except OSError:
        pass


# Lines tritonserver prints at every start on a machine without a usable CUDA driver: expected
# there, and no reason for the user to worry (the model runs on the CPU).
CPU_ONLY_NOISE = ("CudaDriverHelper has not been initialized",
                  "Unable to allocate pinned system memory, pinned memory pool will not be available")


def check_ports_free(address: str, ports: dict) -> None:
    """Every port must be free before the server starts: otherwise tritonserver fails half-way
    (or another server answers our readiness probe)."""
    host = "0.0.0.0" if address in ("", "::") else address
    for flag, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # As servers bind: connections of a recent server in TIME_WAIT do not make a port taken.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise InputError(f"{flag} {port}: {host}:{port} is taken ({e.strerror}; another server?); "
                                 f"pick a free port with {flag}") from None


def relay_log(stream, out=sys.stderr) -> None:
    """The server's log lines to our stderr, less the CPU-only start-up noise."""
    for line in stream:
        if not any(noise in line for noise in CPU_ONLY_NOISE):
            out.write(line)
            out.flush()


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


# ---------------------------------------------------------------- CLI
# The ranges of the numeric flags below (app/cli.py checks them before run()).
FLAG_RULES = {"max_batch": Number(int, 0, 1024, hint="0: a fixed-batch export's own dims"),
              "instances": Number(int, 1, 64), "max_queue_delay_us": Number(int, 0, 10_000_000),
              "http_port": Number(int, 1, 65535), "grpc_port": Number(int, 1, 65535),
              "metrics_port": Number(int, 1, 65535), "startup_timeout": Number(float, above=0, max=3600)}


def add_arguments(p) -> None:
    p.add_argument("--onnx", required=True, help="model.onnx with its sidecar")
    p.add_argument("--backend", choices=("onnxruntime", "openvino"), default="onnxruntime",
                   help="what runs the model inside Triton's Python backend: onnxruntime (default) or openvino "
                        "(CPU, fp32 precision hint, as the app's OpenVINO engine)")
    p.add_argument("--name", default="bisenet", help="model name clients use in the URL (default bisenet)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; Triton has no auth: expose it only on a "
                        "trusted network)")
    p.add_argument("--http-port", type=int, default=8000, help="default 8000")
    p.add_argument("--grpc-port", type=int, default=8001, help="default 8001")
    p.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics (default 8002)")
    p.add_argument("--max-batch", type=int, default=8,
                   help="Triton max_batch_size (default 8); 0: no Triton batching, the model's own fixed dims "
                        "[N, 3, H, W] (as triton-repo writes a fixed-batch export)")
    p.add_argument("--max-queue-delay-us", type=int, default=DEFAULT_QUEUE_DELAY_US,
                   help=f"dynamic batching delay (default {DEFAULT_QUEUE_DELAY_US})")
    p.add_argument("--instances", type=int, default=1, help="model instances (processes) (default 1)")
    p.add_argument("--server-env", help="venv with nvidia-pytriton + onnxruntime (default $BISENET_TRITON_ENV "
                   "or ./.venv-triton; scripts/setup_triton.sh makes it)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for ready (default 120)")
    p.add_argument("--verbose", action="store_true", help="Triton's info log")


def run(args) -> int:
    if not args.onnx.endswith(".onnx"):
        raise InputError(f"--onnx {args.onnx}: expected a .onnx file")
    if args.max_batch < 0:
        raise InputError(f"--max-batch {args.max_batch}: use 1 or more (or 0 for a fixed-batch export's own dims)")
    ports = {args.http_port, args.grpc_port, args.metrics_port}
    if len(ports) != 3 or not all(0 < p < 65536 for p in ports):
        raise InputError("--http-port, --grpc-port and --metrics-port must be three different ports 1-65535")
    check_ports_free(args.address, {"--http-port": args.http_port, "--grpc-port": args.grpc_port,
                                    "--metrics-port": args.metrics_port})
    work = Path(tempfile.mkdtemp(prefix="bisenet-triton-"))
    proc = None
    try:
        repo = work / "models"
        model = Path(args.onnx)
        write_repository(model, repo, args.name, max_batch=args.max_batch, instances=args.instances,
                         queue_delay_us=args.max_queue_delay_us, backend="python",
                         extra_files={"model.py": Path(__file__).with_name("triton_python_model.py")},
                         extra_parameters={"runtime": args.backend})
        env = find_server_env(args.server_env)   # after the model: its errors come first
        env.require(args.backend)
        cmd = server_command(env, repo, env.backend_dir(work), args)
        proc = subprocess.Popen(cmd, env=env.environ(), preexec_fn=_die_with_parent,
                                stderr=subprocess.PIPE, text=True, errors="replace")
        threading.Thread(target=relay_log, args=(proc.stderr,), daemon=True).start()
        host = args.address if args.address not in ("0.0.0.0", "::") else "127.0.0.1"
        if not wait_ready(f"http://{host}:{args.http_port}/v2/models/{args.name}/ready", proc, args.startup_timeout):
            code = proc.poll()
            why = f"exit code {code}" if code is not None else f"not ready in {args.startup_timeout:g} s"
            raise SetupError(f"tritonserver did not get ready ({why}); see its log above, --verbose for more")
        print(f"Triton serving {args.name} ({model}): grpc://{host}:{args.grpc_port}/{args.name} "
              f"http://{host}:{args.http_port}/{args.name} metrics http://{host}:{args.metrics_port}/metrics",
              file=sys.stderr, flush=True)
        return _wait(proc)
    finally:
        if proc is not None and proc.poll() is None:
            _stop(proc)
        shutil.rmtree(work, ignore_errors=True)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait(proc: subprocess.Popen) -> int:
    """Until the server exits or we get SIGINT/SIGTERM (then stop it cleanly)."""
    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        code = proc.wait()
        return 0 if code == 0 else 1
    except KeyboardInterrupt:
        _stop(proc)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
