"""The server under attack, against the real app and real sockets on 127.0.0.0/8: attackers
on other addresses (127.0.0.2 and up) cannot spend the user's (127.0.0.1) connections, flood
the log, or lift a lock-out; the connection budget fits the open-file limit."""
from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest

from app.http_sink import HttpSink
from app.frames import Frame
from app.latency import read_log
from app.server import AppServer, ServerOptions
from app.server.auth import LOCKOUT_S, MAX_FAILURES, FailureTable
from app.server.limits import MIN_PENDING, PER_ADDRESS_PENDING, RESERVED_FDS, ConnectionBudget, Plan, plan
from testkit.app_helpers import REPO, SAMPLE_VIDEO, tiny_onnx
from testkit.app_process import ENV, App, written_rate
from testkit.http_clients import TOKEN, bearer, count_refused, metric_values, open_stream, read_parts, request

# Seconds the attackers hold their sockets in the app test (docs/service.md's measurement: 30);
# 8 outlasts the server's 5 s header timeout, so the slow sockets are closed and reconnect.
ATTACK_S = float(os.environ.get("BISENET_ATTACK_S", "8"))


def attackers(port: int, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "testkit.attackers", str(port), *map(str, args)], cwd=REPO,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@contextmanager
def open_file_limit(n: int | None):
    """The soft descriptor limit lowered to n while the block runs (children inherit it)."""
    if n is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (n, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def user_requests(port: int) -> dict:
    """One round of what the user does: a snapshot, stats, and a stream read for two frames
    -> {what: HTTP status}."""
    out = {"snapshot": request(port, "/snapshot.jpg", bearer())[0],
           "stats": request(port, "/stats.json", bearer())[0]}
    s = open_stream(port, TOKEN)
    try:
        f = s.makefile("rb")
        out["stream"] = int(f.readline().split()[1])
        if out["stream"] == 200:
            read_parts(f, 2)
    finally:
        s.close()
    return out


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file(), reason="no sample video")
@pytest.mark.parametrize("nofile", [None, 256], ids=["default-limit", "nofile-256"])
def test_attackers_on_another_address_cannot_refuse_the_user_or_flood_the_log(tmp_path, nofile, free_port):
    """300 idle + 300 slow-header sockets from 127.0.0.2, reconnecting as closed: every
    authenticated snapshot, stats and stream request from 127.0.0.1 succeeds and the pipeline
    keeps its fps; then 2000 malformed requests from 127.0.0.3 add a few log lines, counted in
    /metrics. The same with the app's open-file limit at 256."""
    model = tiny_onnx((64, 96))
    port = free_port
    log = tmp_path / "lat.csv"
    with open_file_limit(nofile):
        app = App("--source", SAMPLE_VIDEO, "--realtime", "--loop", "--model", model, "--output",
                  f"http://127.0.0.1:{port}", "--auth-token", TOKEN, log=log)
    rounds, failed, attack = 0, [], None
    try:
        app.wait_rows(30)
        start = time.monotonic() - read_log(log)[-1]["capture_s"]   # the run's clock, roughly
        t0, c0 = time.monotonic(), cpu_s(app.proc.pid)
        time.sleep(4)
        t1, c1 = time.monotonic(), cpu_s(app.proc.pid)
        attack = attackers(port, "--idle", 300, "--slow", 300, "--seconds", ATTACK_S)
        time.sleep(1.0)   # the attackers at full strength
        t2, c2 = time.monotonic(), cpu_s(app.proc.pid)
        while attack.poll() is None and time.monotonic() < t2 + ATTACK_S - 1.5:
            statuses = user_requests(port)
            rounds += 1
            failed += [(what, status) for what, status in statuses.items() if status != 200]
        t3, c3 = time.monotonic(), cpu_s(app.proc.pid)
        held = json.loads(attack.communicate(timeout=60)[0])
        flood = subprocess.run([sys.executable, "-m", "testkit.attackers", str(port), "--malformed", "2000",
                                "--address", "127.0.0.3"], cwd=REPO, env=ENV, capture_output=True, text=True,
                               timeout=300)
        malformed = json.loads(flood.stdout)
        after = user_requests(port)
        metrics = request(port, "/metrics", bearer())[2].decode()
    finally:
        if attack is not None and attack.poll() is None:
            attack.kill()
        app.signal()
        err = app.finish()
    rows = read_log(log)
    fps_before = written_rate(rows, t0 - start, t1 - start)
    fps_during = written_rate(rows, t2 - start, t3 - start)
    errors = metric_values(metrics, "bisenet_http_client_errors_total")
    http_lines = [line for line in err.splitlines() if line.startswith("http:")]
    load = os.getloadavg()[0]
    cpu_before, cpu_during = (c1 - c0) / (t1 - t0), (c3 - c2) / (t3 - t2)   # the app's cores in use
    print(f"\nnofile {nofile}: fps {fps_before:.2f} -> {fps_during:.2f} under attack ({t3 - t2:.1f} s); app CPU "
          f"{cpu_before:.2f} -> {cpu_during:.2f} cores; load {load:.1f}; "
          f"{rounds} user rounds, failed {failed}; attackers {held}; malformed {malformed}; "
          f"client errors {errors}; stderr {len(err.splitlines())} lines, {len(http_lines)} from http:")
    print("\n".join(http_lines))
    assert rounds >= 3 and not failed, failed
    assert after == {"snapshot": 200, "stats": 200, "stream": 200}, after
    assert held["connects"] > 600 and held["closed_by_server"] > 0, held
    assert fps_during >= 0.5 * fps_before, (fps_before, fps_during)   # generous: the machine is shared
    assert malformed.get("400", 0) + malformed.get("error", 0) == 2000, malformed
    assert errors[(("kind", "bad_request"),)] >= malformed.get("400", 0)
    assert "Traceback" not in err and "Error handling request" not in err, err[-3000:]
    assert len(http_lines) <= 8, http_lines
    assert app.proc.returncode == 0, err[-3000:]


def test_plan_fits_the_open_file_limit_and_warns_once_when_max_clients_cannot():
    assert plan(16, 1024) == Plan(16, 32, 128, None)
    fits = plan(16, 256)
    assert fits.warning is None and fits.authenticated + fits.pending + RESERVED_FDS <= 256
    tight = plan(1000, 256)
    assert tight.authenticated + tight.pending + RESERVED_FDS <= 256 and tight.pending == MIN_PENDING
    assert tight.viewers < 1000 and "--max-clients 1000" in tight.warning and "ulimit -n" in tight.warning
    said = []
    with open_file_limit(256):
        server = AppServer(ServerOptions(max_clients=1000), announce=said.append)
        try:
            server.listen("127.0.0.1", 0)
        finally:
            server.close()
    warnings = [s for s in said if "does not fit the open-file limit" in s]
    assert len(warnings) == 1 and "\n" not in warnings[0], said
    assert f"at most {tight.viewers} viewers" in said[-1], said


def test_a_full_pending_pool_of_many_addresses_makes_room_for_a_newcomer():
    """Idle sockets from 16 addresses fill the pending pool: a request from 127.0.0.1 still
    gets through (the oldest silent socket loses its slot), and one address alone can never
    hold more than PER_ADDRESS_PENDING."""
    server = AppServer(ServerOptions(auth_token=TOKEN), announce=lambda m: None)
    server.budget = ConnectionBudget(Plan(viewers=2, authenticated=18, pending=16, warning=None), 5.0,
                                     server.client_errors)
    sink = HttpSink("127.0.0.1", 0, server=server)
    img = np.zeros((48, 64, 3), np.uint8)
    sink.write(Frame(0, time.monotonic(), img), img, None)
    idle = []
    try:
        for i in range(16):
            s = socket.socket()
            s.bind((f"127.0.0.{10 + i}", 0))
            s.connect(("127.0.0.1", sink.port))
            idle.append(s)
        time.sleep(1.5)   # silent past EVICT_AFTER_S
        assert request(sink.port, "/stats.json", bearer())[0] == 200
        crowd = []
        for _ in range(PER_ADDRESS_PENDING + 4):
            s = socket.socket()
            s.bind(("127.0.0.2", 0))
            s.connect(("127.0.0.1", sink.port))
            crowd.append(s)
        refused = count_refused(crowd, 2)
        for s in crowd:
            s.close()
        assert refused == 4, refused
    finally:
        for s in idle:
            s.close()
        sink.close()
        server.close()


def test_wrong_tokens_from_4100_addresses_do_not_unlock_a_locked_one():
    """127.0.0.1 locked by five wrong tokens; then one wrong token from each of 4100 other
    addresses (more than the table holds): 127.0.0.1 is still refused, even with the token."""
    said = []
    server = AppServer(ServerOptions(auth_token=TOKEN), announce=said.append)
    port = server.listen("127.0.0.1", 0, what="metrics")
    try:
        for _ in range(MAX_FAILURES):
            assert request(port, "/metrics", bearer("not-the-token"))[0] == 401
        assert request(port, "/metrics", bearer())[0] == 429
        wrong = b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer nope-nope\r\n\r\n"

        def guess(addresses):
            for address in addresses:
                with socket.socket() as s:
                    s.settimeout(10)
                    s.bind((address, 0))
                    s.connect(("127.0.0.1", port))
                    s.sendall(wrong)
                    assert s.recv(64).startswith(b"HTTP/1.1 401")

        addresses = [f"127.1.{i // 250}.{i % 250 + 1}" for i in range(4100)]
        threads = [threading.Thread(target=guess, args=(addresses[k::4],)) for k in range(4)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert time.monotonic() - t0 < LOCKOUT_S, "too slow to tell"
        status, headers, _ = request(port, "/metrics", bearer())
        assert status == 429 and int(headers["retry-after"]) > 0
        table = server.auth.failures
        assert len(table.counting) + len(table.locked) <= table.size
    finally:
        server.close()


def test_failure_table_is_bounded_and_keeps_its_locks():
    table = FailureTable(size=64)
    for _ in range(MAX_FAILURES):
        table.failed("10.0.0.1", 0.0)
    for i in range(5000):                      # other addresses, locked in turn, fill the table
        for _ in range(MAX_FAILURES):
            table.failed(f"10.1.{i // 250}.{i % 250}", 1.0)
    assert len(table.counting) + len(table.locked) <= 64
    assert table.locked_for("10.0.0.1", 1.0) == pytest.approx(LOCKOUT_S - 1.0)   # the first lock holds
    assert table.locked_for("10.0.0.1", LOCKOUT_S + 0.1) == 0.0                # and ends on time
    assert table.failed("10.2.0.1", LOCKOUT_S + 2.0) is False                  # room again once locks end
    assert "10.2.0.1" in table.counting
