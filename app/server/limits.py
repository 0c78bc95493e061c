"""The connection budget, and the bounded log of what clients get wrong.

A connection is *pending* from accept until one of its requests passes the guard (the Host
check and, where required, the token), then *authenticated* until it closes. The two are
budgeted apart, so sockets that never authenticate cannot take the slots of viewers and API
clients that do:
  - pending: at most PER_ADDRESS_PENDING per client address; a request line and headers
    within `header_timeout_s`, else the socket is closed; all addresses together at most
    `Plan.pending`. When that pool is full, a newcomer takes the slot of the oldest socket of
    the address holding the most (when it holds more than the newcomer would), else of the
    oldest socket silent for EVICT_AFTER_S, else it gets a 503;
  - authenticated: at most `--max-clients` MJPEG viewers plus HEADROOM connections for page,
    snapshot, stats and metrics requests;
  - the total fits the process's open-file limit (`plan`, read when the first listener starts).
A refusal is a 503 written at once and the socket closed: nothing kept.

`ClientErrorLog` turns every client mistake (a malformed request, a refusal, a lock-out, a
failed accept) into a counter in /metrics and at most one log line per kind per interval.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass

log = logging.getLogger("app.server")

HEADROOM = 16             # authenticated connections beyond --max-clients: page, snapshot, stats, metrics
PER_ADDRESS_PENDING = 8   # connections one address may hold before a request of theirs passes the guard
MAX_PENDING = 128         # pending connections of all addresses together
MIN_PENDING = 8
RESERVED_FDS = 64         # descriptors the app keeps for itself: videos, model, logs, pipes, threads
EVICT_AFTER_S = 1.0       # a pending socket silent this long may lose its slot to a newcomer
LOG_INTERVAL_S = 60.0     # at most one line per kind of client error per interval
DETAIL_CHARS = 120        # what a log line quotes of a client's error, at most
BACKLOG = 64              # the listen queue, and the most connections taken per wake-up
OUT_OF_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 5\r\nConnection: close\r\n"
        b"Content-Length: 34\r\n\r\ntoo many clients; try again later\n")


@dataclass(frozen=True)
class Plan:
    viewers: int          # MJPEG viewers at once
    authenticated: int    # authenticated connections at once (viewers + HEADROOM)
    pending: int          # pending connections at once, all addresses
    warning: str | None   # one line when --max-clients does not fit the open-file limit


def open_file_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else int(soft)


def plan(max_clients: int, nofile: int) -> Plan:
    """How many connections of each kind fit in `nofile` descriptors."""
    room = nofile - RESERVED_FDS
    wanted = max_clients + HEADROOM
    if room - wanted >= MIN_PENDING:
        return Plan(max_clients, wanted, min(MAX_PENDING, room - wanted), None)
    authenticated = max(2, room - MIN_PENDING)
    viewers = max(1, authenticated - HEADROOM if authenticated > 2 * HEADROOM else authenticated // 2)
    return Plan(viewers, authenticated, MIN_PENDING,
                f"warning: --max-clients {max_clients} does not fit the open-file limit ({nofile}, see ulimit -n): "
                f"serving at most {viewers} viewers; raise the limit or lower --max-clients")


class ClientErrorLog:
    """Client errors by kind: each counted (`counter`, a prometheus Counter with a `kind`
    label), at most one line per kind per `interval_s`, saying how many it did not print."""

    def __init__(self, counter=None, interval_s: float = LOG_INTERVAL_S, say=None):
        self.counter = counter
        self.interval_s = interval_s
        self.say = say or log.warning
        self.last = {}   # kind -> [monotonic time of its last line, count since]

    def note(self, kind: str, address: str, detail: str) -> None:
        if self.counter is not None:
            self.counter.labels(kind=kind).inc()
        now = time.monotonic()
        last = self.last.get(kind)
        if last is not None and now - last[0] < self.interval_s:
            last[1] += 1
            return
        hidden = f"; {last[1]} more since the last such line" if last and last[1] else ""
        self.last[kind] = [now, 0]
        detail = " ".join(str(detail).split())
        if len(detail) > DETAIL_CHARS:
            detail = detail[:DETAIL_CHARS] + "..."
        self.say(f"http: {kind} from {address}: {detail}{hidden} (one line per {self.interval_s:g} s; "
                 f"all counted in bisenet_http_client_errors_total)")


class RequestErrorLogger:
    """The logger aiohttp's request handlers get: a malformed request (a parser error, 400)
    goes to the client error log instead of a traceback; anything else, a bug in a handler
    included, reaches aiohttp's own logger unchanged."""

    def __init__(self, errors: ClientErrorLog):
        self.errors = errors
        self.logger = logging.getLogger("aiohttp.server")

    def exception(self, msg, *args, exc_info=True, **kwargs) -> None:
        from aiohttp.http_exceptions import HttpProcessingError

        if isinstance(exc_info, HttpProcessingError):
            address = args[0] if args else "?"
            self.errors.note("bad_request", address, f"{type(exc_info).__name__}: {exc_info.message}")
            return
        self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)

    def __getattr__(self, name):
        return getattr(self.logger, name)


class Gate(asyncio.Protocol):
    """One admitted connection, counted by the budget from accept to close; aiohttp's protocol
    (made by `make_inner`) runs behind it."""

    def __init__(self, budget: "ConnectionBudget", address: str, make_inner):
        self.budget, self.address, self.make_inner = budget, address, make_inner
        self.inner = None
        self.transport = None     # set once connected (after the TLS handshake, with TLS)
        self.state = "pending"    # pending -> authenticated; closed
        self.since = time.monotonic()
        self.deadline = None      # the header deadline's timer while pending

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.state == "closed":          # evicted or past its deadline during the TLS handshake
            transport.abort()
            return
        self.budget.gates[transport] = self
        self.inner = self.make_inner()
        self.inner.connection_made(transport)

    def connection_lost(self, exc) -> None:
        self.budget.release(self)
        if self.inner is not None:
            self.inner.connection_lost(exc)

    def data_received(self, data) -> None:
        if self.inner is not None:
            self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received() if self.inner is not None else None

    def pause_writing(self) -> None:
        if self.inner is not None:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is not None:
            self.inner.resume_writing()

    def expire(self) -> None:
        """The header deadline: still no request past the guard -> closed."""
        self.deadline = None
        if self.state == "pending":
            self.budget.errors.note("header_timeout", self.address,
                                    f"no complete request within {self.budget.header_timeout_s:g} s; closed")
            self.budget.drop(self)


class ConnectionBudget:
    """The counts behind every Gate of one server; event-loop thread only."""

    def __init__(self, limits: Plan, header_timeout_s: float, errors: ClientErrorLog):
        self.limits = limits
        self.header_timeout_s = header_timeout_s
        self.errors = errors
        self.pending: OrderedDict[Gate, None] = OrderedDict()   # oldest first
        self.by_address: dict[str, list[Gate]] = {}              # address -> its pending gates, oldest first
        self.authenticated = 0
        self.gates: dict[object, Gate] = {}    # transport -> its gate, to find it from a request

    def admit(self, address: str, make_inner) -> Gate | None:
        """A pending slot for a connection from `address` -> its Gate, or None (refused)."""
        mine = self.by_address.get(address, [])
        if len(mine) >= PER_ADDRESS_PENDING:
            self.errors.note("too_many_connections", address,
                             f"more than {PER_ADDRESS_PENDING} connections without an accepted request; 503")
            return None
        if len(self.pending) >= self.limits.pending and not self._evict_for(len(mine)):
            self.errors.note("busy", address, f"{len(self.pending)} connections without an accepted request "
                             "from other addresses; 503")
            return None
        gate = Gate(self, address, make_inner)
        self.pending[gate] = None
        self.by_address.setdefault(address, []).append(gate)
        gate.deadline = asyncio.get_running_loop().call_later(self.header_timeout_s, gate.expire)
        return gate

    def _evict_for(self, newcomer_holds: int) -> bool:
        biggest = max(self.by_address.values(), key=len)
        if len(biggest) > newcomer_holds + 1:
            victim = biggest[0]
        else:
            victim = next(iter(self.pending))
            if time.monotonic() - victim.since < EVICT_AFTER_S:
                return False
        self.errors.note("evicted", victim.address, "a connection without a request made room for another address")
        self.drop(victim)
        return True

    def promote(self, transport) -> bool:
        """A request on this connection passed the guard -> False when the authenticated
        connections are all taken (the caller answers 503 and closes)."""
        gate = self.gates.get(transport)
        if gate is None or gate.state == "authenticated":
            return True
        if gate.state != "pending" or self.authenticated >= self.limits.authenticated:
            return False
        self._unpend(gate)
        gate.state = "authenticated"
        self.authenticated += 1
        return True

    def drop(self, gate: Gate) -> None:
        """Close a pending connection now (deadline passed, or evicted). One still in its TLS
        handshake is closed when the handshake ends (its timeout is the header deadline)."""
        self._unpend(gate)
        gate.state = "closed"
        if gate.transport is not None:
            gate.transport.abort()

    def release(self, gate: Gate) -> None:
        if gate.state == "pending":
            self._unpend(gate)
        elif gate.state == "authenticated":
            self.authenticated -= 1
        self.gates.pop(gate.transport, None)
        gate.state = "closed"

    def _unpend(self, gate: Gate) -> None:
        if gate.deadline is not None:
            gate.deadline.cancel()
            gate.deadline = None
        if gate in self.pending:
            del self.pending[gate]
            mine = self.by_address[gate.address]
            mine.remove(gate)
            if not mine:
                del self.by_address[gate.address]


class Listener:
    """Accepts on its bound sockets itself, so that the budget decides before anything is
    built: a refused connection costs one accept, one send and one close (no transport, no
    task, no TLS handshake). Out of descriptors: one counted note, accepting pauses a second."""

    def __init__(self, sockets: list, budget: ConnectionBudget, make_inner, ssl_context=None):
        self.sockets, self.budget, self.make_inner, self.ssl = sockets, budget, make_inner, ssl_context
        self.loop = asyncio.get_running_loop()
        self.tasks = set()        # connections being set up (their TLS handshakes)

    def start(self) -> None:
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()

    def _accept(self, sock) -> None:
        for _ in range(BACKLOG):
            try:
                conn, peer = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if out_of_descriptors(e):
                    self.budget.errors.note("accept_failed", "-", f"{e.strerror or e}; accepting again in 1 s")
                    self.loop.remove_reader(sock.fileno())
                    self.loop.call_later(1.0, self._resume, sock)
                    return
                continue   # e.g. ECONNABORTED: that client is gone
            address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            gate = self.budget.admit(address, self.make_inner)
            if gate is None:
                try:
                    conn.send(BUSY, socket.MSG_DONTWAIT)
                except OSError:
                    pass
                conn.close()
                continue
            conn.setblocking(False)
            task = self.loop.create_task(self.loop.connect_accepted_socket(
                lambda gate=gate: gate, conn, ssl=self.ssl, ssl_handshake_timeout=self.budget.header_timeout_s if self.ssl else None))
            self.tasks.add(task)
            task.add_done_callback(self._connected)

    def _connected(self, task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("http: a connection failed to start (%s)", type(task.exception()).__name__)

    def _resume(self, sock) -> None:
        if sock.fileno() != -1:
            self.loop.add_reader(sock.fileno(), self._accept, sock)


def bind(host: str, port: int, backlog: int = BACKLOG) -> list:
    """Listening sockets for `host` ('' or None: every interface, IPv4 and IPv6) and `port`,
    as asyncio's create_server binds them; OSError when it cannot."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def out_of_descriptors(exc) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS
