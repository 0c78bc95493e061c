"""Who may watch, for the HTTP server and the built-in RTSP server (app/rtsp_out.py): the token
(given, or generated and printed once), its checks (Bearer, Basic, the page cookie), and the
per-address lock-out after wrong tokens."""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import sys
import threading
from collections import OrderedDict

from app.server.server_options import TOKEN_ENV

COOKIE = "bisenet_session"
MAX_FAILURES = 5              # wrong tokens per address within FAILURE_WINDOW_S before a lock-out
FAILURE_WINDOW_S = 60.0
LOCKOUT_S = 60.0
MAX_TRACKED_ADDRESSES = 4096  # bounded memory for the lock-out table


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class FailureTable:
    """Wrong tokens per address, bounded, and never flushed by other addresses: a locked
    address stays locked its full LOCKOUT_S whatever the others do. When the table is full,
    the counting (not locked) address whose window started first is forgotten; when every
    entry is a lock, a new address is not tracked until one expires."""

    def __init__(self, size: int = MAX_TRACKED_ADDRESSES):
        self.size = size
        self.lock = threading.Lock()
        self.counting: OrderedDict[str, list] = OrderedDict()   # address -> [failures, window start]
        self.locked: dict[str, float] = {}                        # address -> locked until

    def locked_for(self, address: str, now: float) -> float:
        """Seconds this address must still wait (0: none)."""
        with self.lock:
            until = self.locked.get(address)
            if until is None:
                return 0.0
            if until <= now:
                del self.locked[address]
                return 0.0
            return until - now

    def failed(self, address: str, now: float) -> bool:
        """Count one wrong token -> True when this one locked the address out."""
        with self.lock:
            entry = self.counting.get(address)
            if entry is not None and now - entry[1] > FAILURE_WINDOW_S:
                del self.counting[address]
                entry = None
            if entry is None:
                if not self._make_room(now):
                    return False
                entry = self.counting[address] = [0, now]   # newest window last
            entry[0] += 1
            if entry[0] >= MAX_FAILURES:
                del self.counting[address]
                self.locked[address] = now + LOCKOUT_S
                return True
            return False

    def _make_room(self, now: float) -> bool:
        if len(self.counting) + len(self.locked) < self.size:
            return True
        if self.counting:
            self.counting.popitem(last=False)
            return True
        for address in [a for a, until in self.locked.items() if until <= now]:
            del self.locked[address]
        return len(self.locked) < self.size


class Auth:
    """Who may watch. One per app run; each listener asks `required_for(its bind host)`."""

    def __init__(self, token: str | None = None, disabled: bool = False, announce=None, admin_token: str | None = None):
        self.explicit = token is not None
        self.token = token
        self.admin_token = admin_token   # None: whoever may watch may also edit (the one token is admin)
        self.csrf = secrets.token_urlsafe(18)   # the console's state-changing requests send it back (X-CSRF-Token)
        self.disabled = disabled
        self.announce = announce or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.lock = threading.Lock()
        self.failures = FailureTable()
        self._unannounced = None   # the `watch` line of a generated token not printed yet

    def required_for(self, host: str) -> bool:
        return not self.disabled and (self.explicit or not is_loopback(host))

    def token_for(self, host: str, watch: str, later: bool = False) -> str | None:
        """The token a listener on `host` requires, or None. Generated when none was given and
        printed once, with `watch` (a URL with {token} in it) as the way in; `later`: printed by
        announce_token() once the listener is bound (a failed start prints no token)."""
        if not self.required_for(host):
            return None
        with self.lock:
            if self.token is None:
                self.token = secrets.token_urlsafe(18)
                self._unannounced = watch
        if not later:
            self.announce_token()
        return self.token

    def announce_token(self) -> None:
        """Print a generated token (once), if one is waiting to be printed."""
        with self.lock:
            watch, self._unannounced = self._unannounced, None
        if watch is not None:
            self.announce(f"auth token (generated for this run; set --auth-token or {TOKEN_ENV} to keep "
                          f"one): {self.token}\n  watch: {watch.format(token=self.token)}")

    def cookie_value(self, role: str = "viewer") -> str:
        """What the session cookie holds: derived from the token, so the cookie is not it; the
        admin's from the admin token (when there is one)."""
        if role == "admin" and self.admin_token is not None:
            return hmac.new(self.admin_token.encode(), b"bisenet-edge admin session", hashlib.sha256).hexdigest()
        return hmac.new(self.token.encode(), b"bisenet-edge page session", hashlib.sha256).hexdigest()

    def check(self, headers, cookies, query_token: str | None) -> str:
        """-> 'ok', 'missing' (nothing offered) or 'wrong'."""
        return self.check_role(headers, cookies, query_token)[0]

    def check_role(self, headers, cookies, query_token: str | None, token_required: bool = True) -> tuple[str, str]:
        """-> (verdict, role): verdict 'ok', 'missing' or 'wrong'; role 'admin' or 'viewer'.
        The admin token (or the admin cookie) is admin; the viewer token is admin too when no
        admin token was set. Without a required token (loopback, --no-auth) anyone is a viewer,
        and admin unless an admin token was set and not offered."""
        offered = []
        header = headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            offered.append(value.strip())
        elif scheme.lower() == "basic":
            try:
                offered.append(base64.b64decode(value.strip(), validate=True).decode().partition(":")[2])
            except (binascii.Error, UnicodeDecodeError):
                offered.append("")
        elif header:
            offered.append("")
        if query_token is not None:
            offered.append(query_token)
        cookie = cookies.get(COOKIE)
        if self.admin_token is not None:
            admin = any(hmac.compare_digest(c.encode(), self.admin_token.encode()) for c in offered) or (
                cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie_value("admin").encode()))
            if admin:
                return "ok", "admin"
        one_role = "viewer" if self.admin_token is not None else "admin"
        if not token_required or self.token is None:
            return "ok", one_role
        expected = self.token.encode()
        for candidate in offered:
            if hmac.compare_digest(candidate.encode(), expected):
                return "ok", one_role
        if cookie is not None and hmac.compare_digest(cookie.encode(), self.cookie_value().encode()):
            return "ok", one_role
        # A stale cookie (a tab left open across runs with generated tokens) is not a guess:
        # it must not lock its browser out. Guessing a 256-bit cookie gains nothing anyway.
        return ("wrong" if offered else "missing"), one_role

    def locked_for(self, address: str, now: float) -> float:
        """Seconds this address must still wait after too many wrong tokens (0: none)."""
        return self.failures.locked_for(address, now)

    def failed(self, address: str, now: float) -> bool:
        """One wrong token from `address` -> True when it is now locked out."""
        return self.failures.failed(address, now)
