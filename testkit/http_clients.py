"""Client side of the server tests and bench/http_clients.py: MJPEG viewers that read or never
read, idle sockets, and what a process holds (/proc), all on 127.0.0.1; plain HTTP(S) requests,
the test token, /metrics values and the headless Chromium the page tests use."""
from __future__ import annotations

import http.client
import os
import shutil
import socket
import threading
import time

from prometheus_client.parser import text_string_to_metric_families


def open_stream(port, token, path="/stream.mjpg", rcvbuf=None):
    """A raw MJPEG request with a Bearer token -> the socket (the response not read yet).
    rcvbuf: a small receive buffer, for a viewer that never reads."""
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return s


def read_parts(sock_file, n):
    """Read n MJPEG parts from a response body -> their sizes."""
    sizes = []
    while len(sizes) < n:
        line = sock_file.readline()
        if not line:
            raise ConnectionError("stream ended")
        if line.lower().startswith(b"content-length:"):
            size = int(line.split(b":")[1])
            sock_file.readline()
            data = sock_file.read(size)
            if len(data) != size:
                raise ConnectionError(f"stream cut in a frame ({len(data)} of {size} bytes)")
            sizes.append(size)
    return sizes


class Viewer:
    """A normal viewer: reads the stream in its own thread; `arrivals` holds when each frame came
    (time.monotonic())."""

    def __init__(self, port, token):
        self.sock = open_stream(port, token)
        self.file = self.sock.makefile("rb")
        status = self.file.readline()
        if not status.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"viewer refused: {status!r}")
        read_parts(self.file, 1)
        self.arrivals = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            while True:
                read_parts(self.file, 1)
                self.arrivals.append(time.monotonic())
        except (OSError, ValueError):
            pass   # closed

    def frames_between(self, t0, t1) -> int:
        return sum(1 for t in self.arrivals if t0 <= t < t1)

    def close(self):
        self.sock.close()


def attack(port, token, readers=50, idle=300, resets=10) -> list:
    """`readers` viewers that never read, `idle` sockets that never send a request, the first
    `resets` of them closed with a reset -> the sockets still open (close them to end it)."""
    sockets = []
    for _ in range(readers):
        try:
            sockets.append(open_stream(port, token, rcvbuf=4096))
        except OSError:
            pass   # refused at the cap: what should happen
    for _ in range(idle):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sockets.append(s)
    for s in sockets[:resets]:   # RST instead of FIN
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
    return sockets[resets:]


def proc_counts(pid):
    """-> (threads, open descriptors) of a process: threads alive both now and 0.3 s later,
    the fewer descriptors of the two looks. Short-lived threads are left out, and so are
    FFmpeg's decoder threads ("av:..."), which the looping clip replaces at every loop."""
    def look():
        tids = set()
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    if not f.read().startswith("av:"):
                        tids.add(tid)
            except FileNotFoundError:
                pass
        return tids, len(os.listdir(f"/proc/{pid}/fd"))

    first, fds1 = look()
    time.sleep(0.3)
    second, fds2 = look()
    return len(first & second), min(fds1, fds2)


# -- requests and browsers of the server tests ---------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "s3cret-token-for-tests"


def request(port, path, headers=None, method="GET", timeout=10, tls=None, read=True):
    """-> (status, headers dict, body) from a real HTTP(S) client on 127.0.0.1."""
    if tls is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        body = r.read() if read and not r.getheader("Content-Type", "").startswith("multipart/") else b""
        return r.status, {k.lower(): v for k, v in r.getheaders()}, body
    finally:
        conn.close()


def bearer(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def count_refused(sockets, timeout_s) -> int:
    """How many of these connected sockets got the server's 503 (each waited for timeout_s)."""
    refused = 0
    for s in sockets:
        s.settimeout(timeout_s)
        try:
            refused += s.recv(100).startswith(b"HTTP/1.1 503")
        except socket.timeout:
            pass
    return refused


def metric_values(text, name):
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out
