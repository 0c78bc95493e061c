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


def refuse(transport) -> None:
    transport.write(BUSY)
    transport.close()


class Refuse(asyncio.Protocol):
    """Past the cap of connections whose address is not known yet (TLS handshakes): a 503."""

    def connection_made(self, transport) -> None:
        refuse(transport)


class Gate(asyncio.Protocol):
    """One accepted connection, counted by the budget from accept to close; aiohttp's protocol
    (made by `make_inner`) runs behind it only once the budget admits the connection."""

    def __init__(self, budget: "ConnectionBudget", make_inner):
        self.budget, self.make_inner = budget, make_inner
        self.inner = None
        self.transport = None
        self.address = "?"
        self.state = "new"        # new -> pending -> authenticated; refused / closed
        self.since = time.monotonic()
        self.deadline = None      # the header deadline's timer while pending
        budget.unplaced += 1

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.budget.admit(self):
            refuse(transport)
            return
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

    def __del__(self):
        self.budget.release(self)   # never connected (e.g. a TLS handshake that failed)


class ConnectionBudget:
    """The counts behind every Gate of one server; event-loop thread only."""

    def __init__(self, limits: Plan, header_timeout_s: float, errors: ClientErrorLog):
        self.limits = limits
        self.header_timeout_s = header_timeout_s
        self.errors = errors
        self.unplaced = 0                      # accepted, not yet admitted (TLS handshakes)
        self.pending: OrderedDict[Gate, None] = OrderedDict()   # oldest first
        self.by_address: dict[str, list[Gate]] = {}              # address -> its pending gates, oldest first
        self.authenticated = 0
        self.gates: dict[object, Gate] = {}    # transport -> its gate, to find it from a request

    def accepting(self) -> bool:
        """Room for one more connection whose address is not known yet."""
        return self.unplaced < self.limits.pending

    def admit(self, gate: Gate) -> bool:
        self.unplaced -= 1
        gate.state = "refused"
        mine = self.by_address.get(gate.address, [])
        if len(mine) >= PER_ADDRESS_PENDING:
            self.errors.note("too_many_connections", gate.address,
                             f"more than {PER_ADDRESS_PENDING} connections without an accepted request; 503")
            return False
        if len(self.pending) >= self.limits.pending and not self._evict_for(len(mine)):
            self.errors.note("busy", gate.address, f"{len(self.pending)} connections without an accepted request "
                             "from other addresses; 503")
            return False
        gate.state = "pending"
        self.pending[gate] = None
        self.by_address.setdefault(gate.address, []).append(gate)
        self.gates[gate.transport] = gate
        gate.deadline = asyncio.get_running_loop().call_later(self.header_timeout_s, gate.expire)
        return True

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
        if gate.state != "pending":
            return False
        if self.authenticated >= self.limits.authenticated:
            return False
        self._unpend(gate)
        gate.state = "authenticated"
        self.authenticated += 1
        return True

    def drop(self, gate: Gate) -> None:
        """Close a pending connection now (deadline passed, or evicted)."""
        self._unpend(gate)
        gate.state = "closed"
        gate.transport.abort()

    def release(self, gate: Gate) -> None:
        if gate.state == "new":
            self.unplaced -= 1
        elif gate.state == "pending":
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


def out_of_descriptors(exc) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS
