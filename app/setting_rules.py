"""One validation layer for every input the app and `bisenet` read: flag values (command line
or preset YAML), YAML files, sidecar JSON, model files and output paths.

Here are the app's value rules (the generic ones, and the machinery that declares options,
are core/options.py): each a callable that returns the checked, typed value or raises
ValueError saying what is wrong. `bisenet run`'s settings (app/settings.py) declare which rule
each option takes; every other command declares its options beside it (`OPTIONS` sections,
or `FLAG_RULES` for a few numeric flags; a test checks every numeric flag has a rule), and
`check_command_args` checks them before the command runs. Every problem becomes an
`InputError`: one line naming the flag or file and what to do; the commands print it and exit 2
(app/cli.py).

Output paths: a missing folder is created (like `mkdir -p`), for every kind of output
(videos, frame folders, --latency-log, the files of export/build/calibrate); an output of
`bisenet run` or `export` that cannot be written is refused at start (prepare_output).
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from core.redact import shown, shown_text
from core.options import Expected, apply, check_value
from core.validate import Number


def host_names(value) -> tuple:
    """'a.local, B' or [a.local, B] -> ('a.local', 'b'): lowercase, no empty names."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise Expected(f"expected a comma list of host names, got {shown(value)}")
    return tuple(n.strip().lower() for n in names if n.strip())


def source_spec(value) -> str:
    """A camera index must fit OpenCV's int; everything else is checked when it is opened."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"{shown(value)}: expected a camera index, a file, a folder or a URL")
    spec = str(value).strip()
    if not spec:
        raise ValueError(f"{shown(value)} is empty: pass a camera index, a video/image file, a folder, or a stream URL")
    if spec.isdigit() and int(spec) > 9999:
        raise ValueError(f"{spec} is not a camera index (0, 1, ... or /dev/videoN) nor an existing file")
    default_ports = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    if scheme in default_ports:
        port_of(spec, default_ports[scheme])
    return spec


def port_of(spec: str, default: int) -> int:
    """The port of a URL, 1..65535 (urlsplit raises for junk like :-1 or :99999)."""
    try:
        port = urlsplit(spec).port
    except ValueError:
        port = -1
    if port is None:
        return default
    if not 1 <= port <= 65535:
        raise ValueError(f"{spec}: the port must be a number from 1 to 65535, e.g. {default}")
    return port


def output_spec(value) -> str:
    """Form checks of one --output; paths are probed when the output is made (prepare_output)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{shown(value)}: expected display, a file or folder name, a URL or null")
    spec = value.strip()
    if spec.startswith(("http://", "rtsp://")):
        scheme = spec.split(":", 1)[0]
        port_of(spec, 8080 if scheme == "http" else 8554)
        host = urlsplit(spec).hostname or ""
        if ":" in host:
            raise ValueError(f"{spec}: IPv6 addresses are not supported; use {scheme}://127.0.0.1:PORT "
                             f"(this machine) or {scheme}://@:PORT (every interface)")
    return spec


def listen_address(value, expected: str) -> tuple[str, int]:
    """'9100' -> ('0.0.0.0', 9100) (every interface); '127.0.0.1:9100' -> ('127.0.0.1', 9100)."""
    host, _, port = str(value).strip().rpartition(":")
    try:
        number = Number(int, 1, 65535)(port)
    except ValueError:
        raise ValueError(f"{shown(value)}: expected {expected}") from None
    if ":" in host or host.startswith("["):
        raise ValueError(f"{shown(value)}: IPv6 addresses are not supported; expected {expected}")
    return (host if host not in ("", "@") else "0.0.0.0"), number


def auth_token(value) -> str:
    """A token viewers must send: long enough that guessing it (5 tries a minute) is hopeless."""
    token = str(value)
    if len(token) < 8 or token != token.strip():
        raise ValueError("use at least 8 characters, no spaces around them (e.g. python -c "
                         "'import secrets; print(secrets.token_urlsafe(16))')")
    return token


def latency_log_path(value) -> str:
    if Path(str(value)).suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"{shown_text(value)}: use a .csv or .jsonl file name")
    return str(value)


def check_command_args(module, args):
    """argparse's namespace of a `bisenet` command, checked by its module's declarations: its
    option sections (`OPTIONS`, core/options.py) and the ranges of its other flags
    (`FLAG_RULES`, {dest: rule})."""
    apply(args, getattr(module, "OPTIONS", ()))
    rules = getattr(module, "FLAG_RULES", {})
    given = vars(args)
    for dest in rules:
        if dest in given:
            setattr(args, dest, check_value(dest, given[dest], rules=rules))
    return args
