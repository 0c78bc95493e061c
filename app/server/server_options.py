"""What a run asks of its server: `ServerOptions` (built with keywords from the run's typed
settings) and `ServerError`, a listener that cannot start."""
from __future__ import annotations

from dataclasses import dataclass

from app import setting_rules
from core.errors import BisenetError, InputError

TOKEN_ENV = "BISENET_AUTH_TOKEN"   # the token's environment variable (read by the run's settings)
ADMIN_TOKEN_ENV = "BISENET_ADMIN_TOKEN"   # the admin token's (console edits, reload, deletes)


class ServerError(BisenetError, RuntimeError):
    """A listener that cannot start; one line that says what to do."""


@dataclass
class ServerOptions:
    auth_token: str | None = None     # explicit token (flag or environment)
    admin_token: str | None = None    # the console's admin; None: the viewer token is admin too
    no_auth: bool = False
    allowed_hosts: tuple = ()
    max_clients: int = 16             # MJPEG viewers at once (--max-clients)
    tls_cert: str | None = None
    tls_key: str | None = None
    idle_timeout_s: float = 10.0      # idle keep-alive of an authenticated connection
    send_timeout_s: float = 10.0      # a viewer that takes no data for this long is dropped
    header_timeout_s: float = 5.0     # a new connection must send its request line + headers within this

    def check(self) -> None:
        if self.max_clients < 1:
            raise InputError(f"--max-clients must be at least 1, got {self.max_clients}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InputError("--tls-cert and --tls-key go together: pass both (PEM files) or neither")
        if self.auth_token is not None:
            try:
                setting_rules.auth_token(self.auth_token)
            except ValueError as e:
                raise InputError(f"--auth-token / {TOKEN_ENV}: {e}") from None
        if self.admin_token is not None:
            try:
                setting_rules.auth_token(self.admin_token)
            except ValueError as e:
                raise InputError(f"--admin-token / {ADMIN_TOKEN_ENV}: {e}") from None
            if self.admin_token == self.auth_token:
                raise InputError("--admin-token must differ from --auth-token (the viewers' token); pick another")
