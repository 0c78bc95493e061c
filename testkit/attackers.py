"""Attackers of the server tests (tests/app/test_server_hardening.py), run as their own process so
they do not share the test's interpreter: sockets from one address (127.0.0.2) that connect
and send nothing (idle) or a request line and then one header byte a second (slow), each
reconnecting as soon as the server closes it, for a number of seconds; and malformed requests
(a header past aiohttp's 8190-byte limit).

    python -m testkit.attackers PORT --idle 300 --slow 300 --seconds 30 [--address 127.0.0.2]
    python -m testkit.attackers PORT --malformed 2000 [--address 127.0.0.3]

Prints one JSON line: connections made, closed by the server, 503s and 400s seen.
"""
from __future__ import annotations

import argparse
import errno
import json
import selectors
import socket
import time


def _connect(port: int, address: str) -> socket.socket | None:
    s = socket.socket()
    s.setblocking(False)
    try:
        s.bind((address, 0))
        s.connect_ex(("127.0.0.1", port))
    except OSError:
        s.close()
        return None
    return s


def hold(port: int, idle: int, slow: int, seconds: float, address: str) -> dict:
    """`idle` + `slow` sockets open for `seconds`, each reopened when the server closes it."""
    counts = {"connects": 0, "closed_by_server": 0, "refused_503": 0, "connect_failed": 0}
    sel = selectors.DefaultSelector()
    kinds = ["idle"] * idle + ["slow"] * slow
    sockets: dict[socket.socket, list] = {}   # socket -> [kind, bytes of the slow request sent]
    retry = []                                 # kinds whose connect failed: tried again each round

    def reopen(kind: str) -> None:
        s = _connect(port, address)
        if s is None:
            counts["connect_failed"] += 1
            retry.append(kind)
            return
        counts["connects"] += 1
        sockets[s] = [kind, 0]
        sel.register(s, selectors.EVENT_READ)

    def close(s: socket.socket) -> None:
        sel.unregister(s)
        del sockets[s]
        s.close()

    for kind in kinds:
        reopen(kind)
    slow_request = b"GET /snapshot.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4000
    end = time.monotonic() + seconds
    next_trickle = time.monotonic()
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 503"):
                counts["refused_503"] += 1
            if not data or data.startswith(b"HTTP/"):   # closed, or answered (then closed)
                counts["closed_by_server"] += 1
                kind = sockets[s][0]
                close(s)
                reopen(kind)
        if time.monotonic() >= next_trickle:          # the slow ones: a first line, then a byte a second
            next_trickle += 1.0
            for s, state in list(sockets.items()):
                if state[0] == "slow" and state[1] < len(slow_request):
                    n = 20 if state[1] == 0 else 1
                    try:
                        state[1] += s.send(slow_request[state[1]:state[1] + n])
                    except OSError as e:
                        if e.errno not in (errno.EAGAIN, errno.ENOTCONN):
                            counts["closed_by_server"] += 1
                            close(s)
                            reopen(state[0])
        failed, retry[:] = list(retry), []
        for kind in failed:
            reopen(kind)
    for s in list(sockets):
        close(s)
    return counts


def malformed(port: int, n: int, address: str) -> dict:
    """`n` requests, one after another, each with a 9000-byte header -> the statuses seen."""
    statuses: dict[str, int] = {}
    request = b"GET /snapshot.jpg HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n"
    for _ in range(n):
        s = socket.socket()
        s.settimeout(10)
        try:
            s.bind((address, 0))
            s.connect(("127.0.0.1", port))
            s.sendall(request)
            status = s.recv(64).split(b" ")[1].decode()
        except (OSError, IndexError):
            status = "error"
        finally:
            s.close()
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("port", type=int)
    p.add_argument("--idle", type=int, default=0)
    p.add_argument("--slow", type=int, default=0)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--malformed", type=int, default=0)
    p.add_argument("--address", default="127.0.0.2")
    args = p.parse_args()
    if args.malformed:
        print(json.dumps(malformed(args.port, args.malformed, args.address)), flush=True)
    else:
        print(json.dumps(hold(args.port, args.idle, args.slow, args.seconds, args.address)), flush=True)


if __name__ == "__main__":
    main()
