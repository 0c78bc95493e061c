"""What hostile HTTP clients cost the app: pipeline fps, threads and descriptors with one normal
viewer ("quiet") against the same plus 300 idle sockets and 50 viewers that never read
("attack"), side by side in one run of one app process.

    python bench/http_clients.py                           # R18 at 192x256, random weights
    python bench/http_clients.py --model artifacts/r18.onnx --rounds 3 --seconds 6 --unpaced

The app reads the sample clip in a loop: paced at its 15 fps like a camera (--realtime), or
--unpaced as fast as the model goes, which shows any CPU the server takes from the pipeline.
Phases alternate quiet / attack / quiet / attack ...; fps comes from the latency log over
each phase's seconds; the ratio is attack / the quiet phase before it, and the median over
rounds. CPU ms/frame is the app process's CPU time over the phase divided by its frames: it
shows the server's cost even when other jobs on the machine make fps noisy. Threads are those
alive longer than 0.3 s, FFmpeg's own left out (testkit/http_clients.py).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.latency import read_log  # noqa: E402
from testkit.app_helpers import SAMPLE_VIDEO as SAMPLE, free_port, tiny_onnx  # noqa: E402
from testkit.http_clients import Viewer, attack, proc_counts  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789"


def written_between(log: Path, start: float, t0: float, t1: float) -> int:
    return sum(1 for r in read_log(log) if not r["dropped"] and t0 - start <= r["capture_s"] < t1 - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: unlike fps, it does not depend on how busy
    the rest of the machine is."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                epilog="Example: python bench/http_clients.py --rounds 3 --unpaced")
    p.add_argument("--model", help="an .onnx (default: R18 exported with random weights at --size)")
    p.add_argument("--size", default="192x256", help="export size HxW when --model is not given")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0, help="length of each phase")
    p.add_argument("--max-clients", type=int, default=16)
    p.add_argument("--unpaced", action="store_true", help="read the clip as fast as the model goes")
    args = p.parse_args()
    if not SAMPLE.is_file():
        print(f"no sample video at {SAMPLE}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="bench-http-"))
    model = args.model
    if model is None:
        model = tiny_onnx(tuple(int(v) for v in args.size.split("x")))
    port, log = free_port(), work / "lat.csv"
    cmd = [sys.executable, str(REPO / "run_camera.py"), "--source", str(SAMPLE), "--loop", "--model", str(model),
           "--output", f"http://127.0.0.1:{port}", "--auth-token", TOKEN, "--max-clients", str(args.max_clients),
           "--latency-log", str(log), "--threads", "1"] + ([] if args.unpaced else ["--realtime"])
    app = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE,
                           text=True, start_new_session=True)
    rows, viewer = [], None
    try:
        deadline = time.monotonic() + 120
        while not log.is_file() or len(read_log(log)) < 30:
            if app.poll() is not None or time.monotonic() > deadline:
                print(f"the app did not start: {app.communicate()[1][-2000:]}", file=sys.stderr)
                return 1
            time.sleep(0.2)
        start = time.monotonic() - read_log(log)[-1]["capture_s"]
        viewer = Viewer(port, TOKEN)
        for r in range(args.rounds):
            for phase in ("quiet", "attack"):
                sockets = attack(port, TOKEN) if phase == "attack" else []
                t0, cpu0 = time.monotonic(), cpu_seconds(app.pid)
                peak = proc_counts(app.pid)
                while time.monotonic() < t0 + args.seconds:
                    peak = tuple(map(max, peak, proc_counts(app.pid)))
                t1, cpu1 = time.monotonic(), cpu_seconds(app.pid)
                frames = written_between(log, start, t0, t1)
                rows.append((r, phase, frames / (t1 - t0), viewer.frames_between(t0, t1) / (t1 - t0),
                             1000 * (cpu1 - cpu0) / max(frames, 1), *peak))
                for s in sockets:
                    s.close()
                time.sleep(1.0 if phase == "attack" else 0.0)   # let the refused slots free up
    finally:
        if viewer is not None:
            viewer.close()
        if app.poll() is None:
            os.killpg(app.pid, signal.SIGINT)
        err = app.communicate(timeout=60)[1]
    load = os.getloadavg()
    print(f"bench/http_clients.py: {'unpaced' if args.unpaced else 'paced at 15 fps (--realtime)'}, "
          f"--max-clients {args.max_clients}, {args.seconds:g} s phases, load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f} at the end, {os.cpu_count()} CPUs")
    print(f"{'round':>5} {'phase':>7} {'app fps':>8} {'viewer fps':>11} {'CPU ms/frame':>13} {'threads':>8} {'fds':>5}")
    for r, phase, fps, vfps, cpu, threads, fds in rows:
        print(f"{r:>5} {phase:>7} {fps:>8.2f} {vfps:>11.2f} {cpu:>13.1f} {threads:>8} {fds:>5}")
    for column, name in ((2, "fps"), (4, "CPU ms per frame")):
        ratios = [rows[i + 1][column] / rows[i][column] for i in range(0, len(rows), 2) if rows[i][column] > 0]
        print(f"{name} attack / quiet: {', '.join(f'{x:.3f}' for x in ratios)}; median {statistics.median(ratios):.3f}")
    if "Traceback" in err:
        print("the app printed a traceback:\n" + err[-3000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
