"""systemd's notification protocol as the app speaks it (app/sd_notify.py), heard on a real unix
datagram socket standing in for systemd's $NOTIFY_SOCKET: the calls alone, the app as a
process (READY, WATCHDOG at the period, STATUS with fps, STOPPING at SIGTERM), and a pipeline
made to hang in infer(): its WATCHDOG pings stop within one period and resume once it goes on."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from app import sd_notify
from app.sd_notify import notify, watchdog_period_s
from app.session import Session
from app.settings import build
from engines.base import Engine
from engines.onnx_engine import OnnxEngine
from testkit.app_helpers import REPO, SAMPLE_VIDEO, free_port, tiny_onnx


class Systemd:
    """The receiving end of $NOTIFY_SOCKET: a bound unix datagram socket and a thread that
    keeps every message as (time.monotonic() it arrived, {KEY: VALUE})."""

    def __init__(self, address: str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.1)
        self.messages: list = []
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._listen, daemon=True)
        self.thread.start()

    def _listen(self) -> None:
        while not self.closed.is_set():
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append((time.monotonic(), fields))

    def times(self, key: str, value: str | None = None) -> list:
        return [t for t, f in list(self.messages) if key in f and (value is None or f[key] == value)]

    def wait_for(self, key: str, value: str | None = None, timeout_s: float = 60, after: float = 0.0) -> float:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [t for t in self.times(key, value) if t > after]
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no {key}={value or '...'} within {timeout_s} s; got {self.messages}")

    def close(self) -> None:
        self.closed.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def systemd(monkeypatch):
    """A listening socket at a short path (unix socket paths are limited to 108 bytes) as
    $NOTIFY_SOCKET."""
    folder = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(folder, "notify")
    listener = Systemd(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield listener
    listener.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_notify_sends_one_datagram_of_fields_and_is_a_no_op_outside_systemd(systemd, monkeypatch):
    assert notify(READY=1, STATUS="cam0 15.0 fps\nsecond line") is True
    systemd.wait_for("READY", "1")
    assert systemd.messages[0][1] == {"READY": "1", "STATUS": "cam0 15.0 fps second line"}
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert notify(READY=1) is False


def test_an_abstract_socket_address_is_reached_with_its_at_sign(monkeypatch):
    name = f"bisenet-sd-notify-test-{os.getpid()}"
    listener = Systemd("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify(WATCHDOG=1) is True
        listener.wait_for("WATCHDOG", "1", timeout_s=10)
    finally:
        listener.close()


def test_a_dead_socket_is_one_warning_line_and_never_an_exception(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sd_notify, "_warned", False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert notify(READY=1) is False
    assert notify(WATCHDOG=1) is False
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: cannot notify systemd at "), err


def test_the_watchdog_period_comes_from_watchdog_usec_for_this_process_only(monkeypatch):
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_period_s() is None
    monkeypatch.setenv("WATCHDOG_USEC", "500000")
    assert watchdog_period_s() == 0.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_period_s() == 0.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))   # meant for another process
    assert watchdog_period_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert watchdog_period_s() is None


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
def test_the_app_says_ready_pings_at_the_period_reports_fps_and_says_stopping_at_sigterm(systemd, tmp_path):
    period = 1.0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WATCHDOG_USEC": str(int(period * 1e6))}
    proc = subprocess.Popen([sys.executable, str(REPO / "run_camera.py"), "--source", str(SAMPLE_VIDEO),
                             "--realtime", "--loop", "--model", str(tiny_onnx((64, 96))), "--output", "null",
                             "--threads", "1"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        ready = systemd.wait_for("READY", "1", timeout_s=120)
        systemd.wait_for("STATUS", after=ready + 1.0, timeout_s=30)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        stopping = systemd.wait_for("STOPPING", "1", timeout_s=30)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    pings = [t for t in systemd.times("WATCHDOG", "1") if t < stopping]
    assert pings and pings[0] >= ready, (ready, pings)   # nothing is watched before READY
    gaps = [b - a for a, b in zip([ready, *pings], pings)]
    assert len(pings) >= 4 and max(gaps) < period, gaps   # within the period, every time
    statuses = [f["STATUS"] for t, f in systemd.messages if "STATUS" in f and t > ready + 0.5]
    assert statuses and all(s.startswith("cam0 ") and s.endswith(" fps") for s in statuses), statuses
    assert max(float(s.split()[1]) for s in statuses) > 1.0, statuses   # the street clip runs at 15 fps


class Gate(Engine):
    """The real tiny ONNX engine behind a gate: while the gate is shut, infer() blocks (a hung
    engine, or a driver call that never returns) until it opens."""

    def __init__(self, inner: Engine):
        self.inner, self.info, self.backend, self.input_dtype = inner, inner.info, inner.backend, inner.input_dtype
        self.open = threading.Event()
        self.open.set()
        self.blocked_at = None

    def infer(self, batch):
        if not self.open.is_set():
            self.blocked_at = time.monotonic()
            self.open.wait()
        return self.inner.infer(batch)


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
def test_a_hung_pipeline_stops_the_watchdog_pings_within_one_period_and_they_resume(systemd, monkeypatch):
    period = 1.0
    monkeypatch.setenv("WATCHDOG_USEC", str(int(period * 1e6)))
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    inner = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    engine = Gate(inner)
    settings = build({"source": [str(SAMPLE_VIDEO)], "realtime": True, "loop": True, "output": ["null"]})
    session = Session(settings, engine, log=lambda msg: None)
    runner = threading.Thread(target=session.run, daemon=True)
    try:
        runner.start()
        ready = systemd.wait_for("READY", "1", timeout_s=60)
        systemd.wait_for("WATCHDOG", "1", after=ready + 2 * period, timeout_s=30)   # healthy: pinging
        engine.open.clear()
        while engine.blocked_at is None:
            time.sleep(0.01)
        hung = engine.blocked_at
        time.sleep(3 * period)
        late = [t for t in systemd.times("WATCHDOG", "1") if t > hung + period]
        assert late == [], f"pings went on {[round(t - hung, 2) for t in late]} s into the hang"
        reopened = time.monotonic()
        engine.open.set()
        resumed = systemd.wait_for("WATCHDOG", "1", after=reopened, timeout_s=10)
        assert resumed - reopened < period
    finally:
        engine.open.set()
        session.stop(force=True, quiet=True)
        runner.join(30)
        session.close()
        inner.close()
    assert not runner.is_alive()
    systemd.wait_for("STOPPING", "1", timeout_s=10)


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason=f"no sample video at {SAMPLE_VIDEO}")
def test_an_idle_pipeline_with_its_camera_in_outage_keeps_pinging(systemd, monkeypatch):
    """A file camera that ends and an RTSP camera that is down: no frame to infer for seconds,
    yet nothing is stuck, so the pings go on and the status says the camera is reconnecting."""
    period = 1.0
    monkeypatch.setenv("WATCHDOG_USEC", str(int(period * 1e6)))
    engine = OnnxEngine(tiny_onnx((64, 96)), threads=1)
    settings = build({"source": [f"rtsp://127.0.0.1:{free_port()}/down", str(SAMPLE_VIDEO)], "max_frames": 5,
                      "output": ["null"]})
    session = Session(settings, engine, log=lambda msg: None)
    runner = threading.Thread(target=session.run, daemon=True)
    try:
        runner.start()
        ready = systemd.wait_for("READY", "1", timeout_s=60)
        time.sleep(1.0 + 3 * period)
        assert session.pipeline.captured_by_camera()["cam1"] == 5   # the file camera is done
        pings = [t for t in systemd.times("WATCHDOG", "1") if t > ready + 1.0]
        assert len(pings) >= 4, pings
        assert "cam0 reconnecting" in session.status()
    finally:
        session.stop(force=True, quiet=True)
        runner.join(30)
        session.close()
        engine.close()
    assert not runner.is_alive()
