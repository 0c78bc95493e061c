"""Run every test_*.py under tests/ in its own pytest process and end with one line
`N passed, N failed, N skipped` (the counts of all files); exit 1 when any file failed or
crashed. Used by scripts/test.sh for the whole suite.

Three phases, so the suite fits its 15 minutes on 2 cores without making a timed test share
the CPU: first the files in COMPUTE_ONLY, two at a time (no fps, latency or drop checks, no
live sources or outages whose timing matters, nothing they write that another of them reads;
the bench smoke tests are here because each bench's verdict is accounting, not speed); then
every other file but those in WAITING, one at a time, on an otherwise idle machine; last the
WAITING files, two at a time: timed, but most of their wall time is real time passing (an
outage, a reconnect, a watchdog period, a stream played at its rate) with under half a core
busy, so two of them leave each other a core. A new test file lands in the second phase until
someone lists it here."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNT = re.compile(r"(\d+) (passed|failed|skipped|error|errors|deselected|xfailed|xpassed)")
PARALLEL = 2
# Longest first (wall seconds on the 2-core box, 2026-12-03), so the two lanes end together.
COMPUTE_ONLY = [
    "test_bench_smoke.py", "test_readme.py", "test_mmseg_parity.py", "test_train_resume.py", "test_accuracy_camvid.py",
    "test_export.py", "test_multicamera.py", "test_analytics_app.py", "test_app_run.py",
    "test_calib_class_gate.py", "test_faults.py", "test_recording.py",
    "test_export_precision.py", "test_openvino_engine.py", "test_doctor.py", "test_api.py", "test_hardening_inputs.py",
    "test_hardening_faults.py", "test_decode.py", "test_hardening_outputs.py", "test_session.py",
    "test_hardening_cameras.py", "test_app_http.py", "test_first_hour.py", "test_app_pipeline.py",
    "test_train_ddp.py", "test_validate.py", "test_eval.py", "test_installed_package.py",
    "test_gpu_check.py", "test_calib_quantize.py", "test_bench_models.py", "test_model_zoo.py", "test_cuda_kernels.py",
    "test_train_init.py", "test_onnx_engine.py", "test_checkpoints.py", "test_tensorrt.py",
    "test_torch_cuda_engine.py", "test_layout.py", "test_calib_gate.py", "test_precision_choice.py",
    "test_fingerprint.py", "test_analytics_kernel.py", "test_analytics.py", "test_core_sidecar.py",
    "test_calib_cache_key.py", "test_calib_image_set.py", "test_datasets.py", "test_app_overlay.py",
    "test_app_latency.py", "test_cli_errors.py", "test_preprocess.py", "test_settings.py", "test_cpu_features.py",
    "test_openvino_signal_stack.py", "test_engine_options.py", "test_command_options.py", "test_config_limits.py",
    "test_fused_chain.py", "test_encoding.py", "test_service_unit.py", "test_bench_overlay.py",
    "test_demo_model.py", "test_bounded_disk.py", "test_atomic_outputs.py", "test_triton_serve_cli.py", "test_triton_repo.py",
    "test_console_history.py", "test_app_sinks.py", "test_train_gpu.py",
]

# Timed files that mostly wait: wall and CPU seconds alone on the 2-core Xeon, 2026-12-07
# (TEST_LOG_DIR run): longest first. Not here: files that check a rate or race a relay's
# burst (test_multicamera_live, test_app_service, test_overlay_picture) or keep a core busy.
WAITING = [
    "test_faults_rtsp.py",                # 36 s wall, 12 s CPU
    "test_rtsp_out.py",                   # 30, 5
    "test_sd_notify.py",                  # 18, 6
    "test_rtsp_app.py",                   # 16, 8
    "test_reload.py",                     # 14, 6
    "test_recording_live.py",             # 14, 3
    "test_analytics_delivery_faults.py",  # 11, 1
    "test_crash_safe_video.py",           # 5, 3
    "test_rtsp_reconnect.py",             # 4, 0
    "test_analytics_events.py",           # 4, 1
    "test_app_sources.py",                # 3, 1
]


def run_file(name: str) -> dict:
    """One file in its own pytest process: its summary line, exit code, wall and CPU seconds."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name], cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)   # the CPU of this file's processes alone
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if os.environ.get("TEST_LOG_DIR"):   # keep each file's whole output (e.g. with PYTEST_ADDOPTS=--durations=10)
        logs = Path(os.environ["TEST_LOG_DIR"])
        logs.mkdir(parents=True, exist_ok=True)
        (logs / (name.replace("/", "_") + ".log")).write_text(text)
    lines = text.rstrip().splitlines()
    return {"name": name, "text": text, "last": lines[-1] if lines else "", "rc": proc.returncode,
            "wall": time.monotonic() - started, "cpu": usage.ru_utime + usage.ru_stime}


def main() -> int:
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py"))
    by_name = {Path(f).name: f for f in files}   # COMPUTE_ONLY names files by basename (unique in tests/)
    first = [by_name[n] for n in COMPUTE_ONLY if n in by_name]
    last = [by_name[n] for n in WAITING if n in by_name]
    rest = [f for f in files if f not in first and f not in last]
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    bad, t0, lock = [], time.monotonic(), threading.Lock()

    def report(r: dict) -> None:
        with lock:
            for n, kind in COUNT.findall(r["last"]):
                kind = "errors" if kind in ("error", "errors") else kind
                if kind in totals:
                    totals[kind] += int(n)
            print(f"{r['name']}: {r['last'].strip('= ') or 'no output'} ({r['wall']:.0f} s wall, "
                  f"{r['cpu']:.0f} s CPU)", flush=True)
            if r["rc"] not in (0, 5):   # 5: nothing collected (all skipped at import)
                bad.append(r["name"])
                print(r["text"][-6000:], flush=True)
                if r["rc"] < 0 or not COUNT.search(r["last"]):
                    totals["errors"] += 1   # a crash: no summary line of its own

    def two_at_a_time(names: list) -> None:
        with ThreadPoolExecutor(PARALLEL) as pool:
            for r in pool.map(run_file, names):
                report(r)

    print(f"{len(first)} compute-only files, {PARALLEL} at a time:", flush=True)
    two_at_a_time(first)
    print(f"({time.monotonic() - t0:.0f} s) {len(rest)} timed files, one at a time:", flush=True)
    for name in rest:
        report(run_file(name))
    print(f"({time.monotonic() - t0:.0f} s) {len(last)} timed files that mostly wait, {PARALLEL} at a time:", flush=True)
    two_at_a_time(last)
    print(f"{len(bad)} file(s) failed: {', '.join(bad)}" if bad else "every test file passed",
          f"({time.monotonic() - t0:.0f} s)")
    print(f"{totals['passed']} passed, {totals['failed'] + totals['errors']} failed, {totals['skipped']} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
