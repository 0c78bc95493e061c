"""`bisenet service unit --config X`: a systemd unit that runs `bisenet run --config X` as a
service, printed to stdout (docs/service.md, "Running under systemd").

    bisenet service unit --config configs/app/headless-file.yaml | sudo tee /etc/systemd/system/bisenet-edge.service

What it holds, and why:
- Type=notify, NotifyAccess=main: the app says READY=1 once its cameras are open (or in
  outage), STATUS= with each camera's fps, STOPPING=1 (app/sd_notify.py);
- WatchdogSec=: the app pings while its pipeline progresses; a hung pipeline is killed and,
  with Restart=on-failure, started again;
- ExecReload sends SIGHUP: the app re-reads its preset without a restart;
- ExecStart: this venv's own `bisenet` (or its python), the preset's absolute path, and the
  directory this command runs in as WorkingDirectory (a preset's relative paths resolve there);
- PYTHONFAULTHANDLER: the watchdog's SIGABRT prints every thread's Python stack to the
  journal first, so a hang says where it hung;
- MALLOC_ARENA_MAX=2: glibc's malloc keeps at most two arenas instead of one per thread that
  ever allocated (8 per core): threads come and go for months (viewers, reconnects, reloads)
  and each arena keeps freed memory fragmented. The 30-minute in-process soak grew +6.8 MB
  after warm-up without it and +1.1 MB with it, the same run otherwise (docs/service.md, Soak);
- hardening that leaves cameras and GPUs alone: NoNewPrivileges, ProtectSystem=full (/usr,
  /boot, /etc read-only), ProtectKernelTunables/Modules, ProtectControlGroups,
  RestrictRealtime, LockPersonality. Left out on purpose: PrivateDevices (hides /dev/video*,
  /dev/nvidia*, /dev/nvhost-*), PrivateTmp (hides Jetson's /tmp/argus_socket, which CSI
  cameras reach nvargus-daemon through), ProtectHome (the venv and outputs are often under
  /home), ProtectSystem=strict (outputs may go anywhere the preset says),
  MemoryDenyWriteExecute (inference libraries compile kernels at run time);
- SupplementaryGroups: video (cameras; Jetson's GPU) and render (a desktop GPU) where this
  machine has them.
"""
from __future__ import annotations

import getpass
import grp
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Annotated

from core import options
from core.config_files import config_names, config_path
from core.errors import InputError, MissingFileError
from core.options import Rule, Section, Text, option
from core.validate import Number

HELP = "print a systemd unit that runs `bisenet run --config X` as a service (watchdog, reload, restart)"
EXAMPLE = "bisenet service unit --config headless-file --name bisenet-edge"

UNIT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,200}$")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$", re.IGNORECASE)
DOC = Path(__file__).resolve().parent.parent / "docs" / "service.md"
GROUPS = ("video", "render")   # cameras (and Jetson's GPU); a desktop GPU's render node


def unit_name(value) -> str:
    value = str(value).removesuffix(".service")
    if not UNIT_NAME.match(value):
        raise ValueError(f"{value!r}: use letters, digits and _ . : - (the unit is NAME.service)")
    return value


def user_name(value) -> str:
    value = str(value)
    if not USER_NAME.match(value):
        raise ValueError(f"{value!r} is not a user name")
    return value


class ServiceFlags(Section):
    """`bisenet service`'s options, each declared once."""
    config: Text = option(None, "the preset the service runs (`bisenet run --config`): a name under configs/app "
                          "or a YAML path; written into the unit as an absolute path", metavar="YAML",
                          required=True)
    name: Annotated[str, Rule(unit_name)] = option(
        "bisenet-edge", "the service's name: its log tag in the journal; install the unit as NAME.service "
        "(default bisenet-edge)", metavar="NAME")
    user: Annotated[str | None, Rule(user_name)] = option(
        None, "run as this user (default: the user running this command); add it to the video group for "
              "cameras", metavar="USER")
    watchdog_sec: Annotated[int, Rule(Number(int, 2, 3600, hint="seconds"))] = option(
        30, "restart the app when its pipeline makes no progress for this long (default 30 s; at least twice "
            "the slowest inference)", metavar="S")


OPTIONS = (ServiceFlags,)   # checked by app/cli.py before run()


def add_arguments(p) -> None:
    p.add_argument("what", choices=("unit",), metavar="unit", help="print the systemd unit")
    options.add_arguments(p, OPTIONS, suppress=False)


def exec_start(config: Path) -> str:
    """This venv's `bisenet run --config <absolute path>` (its `bisenet` script, else its python)."""
    python = Path(os.path.abspath(sys.executable))   # not resolved: a venv's python is a symlink
    script = python.parent / "bisenet"
    program = [str(script)] if script.is_file() else [str(python), "-m", "app.cli"]
    return " ".join(quoted(w) for w in [*program, "run", "--config", str(config)])


def quoted(word: str) -> str:
    """A word of a unit's command line (systemd's quoting: double quotes, backslash escapes;
    % and $ doubled, or systemd expands them)."""
    word = word.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[\w./:@+=,-]+", word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def unit_text(config: Path, name: str, user: str, watchdog_sec: int, workdir: Path) -> str:
    groups = [g for g in GROUPS if _group_exists(g)]
    modprobe = shutil.which("nvidia-modprobe")
    lines = [
        "[Unit]",
        f"Description=bisenet-edge live segmentation ({config.name})",
        *([f"Documentation=file://{DOC}"] if DOC.is_file() else []),
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={exec_start(config)}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={str(workdir).replace('%', '%%')}",   # taken as written: no quotes
        f"User={user}",
        *([f"SupplementaryGroups={' '.join(groups)}"] if groups else []),
        # An optional file of secrets (BISENET_AUTH_TOKEN=...), kept out of the unit.
        f"EnvironmentFile=-/etc/default/{name}",
        "Environment=PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 MALLOC_ARENA_MAX=2",
        f"SyslogIdentifier={name}",
        f"WatchdogSec={watchdog_sec}",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStartSec=120",
        # SIGTERM: finish the frames in flight and finalize the outputs.
        "TimeoutStopSec=30",
        *([f"ExecStartPre=-+{modprobe} -u -c=0"] if modprobe else []),   # CUDA's nvidia-uvm, as root
        "NoNewPrivileges=yes",
        "ProtectSystem=full",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def run(args) -> int:
    path = config_path("app", args.config)
    if not path.is_file():
        raise MissingFileError(f"--config {args.config}: no such file (presets: {', '.join(config_names('app'))})")
    from app.settings import build

    build({}, str(path))   # a preset that would not run is refused here, not at the service's start
    user = args.user or current_user()
    print(unit_text(path.resolve(), args.name, user, args.watchdog_sec, Path.cwd()), end="")
    return 0


def current_user() -> str:
    """Who runs this command (under sudo: who called sudo): the service's default user."""
    try:
        user = os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        user = ""
    if not USER_NAME.match(user):
        raise InputError("cannot tell which user should run the service; pass --user NAME")
    return user
