"""`bisenet` console command: one subcommand per stage, each implemented in its own module.

Each module named below exposes `HELP` (one line), `EXAMPLE` (a command line),
`add_arguments(parser)` and `run(args) -> int`. Modules are imported only when their
subcommand runs, so `bisenet run` never imports torch.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback

from core.errors import BisenetError, first_line
from core.options import OneLineParser
from core.install_hint import project_version

# subcommand -> module. Build time (torch) and run time (no torch) side by side.
SUBCOMMANDS = {
    "models": "engines.zoo",
    "export": "engines.export",
    "train": "training.train",
    "eval": "app.eval_command",
    "prepare": "training.prepare",
    "calibrate": "calibration.calibrate",
    "build": "app.build",
    "run": "app.run",
    "latency-plot": "app.latency_plot",
    "triton-repo": "engines.triton_repo",
    "serve-triton": "engines.triton_serve",
    "doctor": "app.doctor",
    "service": "app.service_unit",
}


def build_parser(modules: dict) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="bisenet", description="BiSeNetV1 edge segmentation: model zoo, export, training, "
        "INT8 calibration, TensorRT builds and the live app.",
        epilog="Example: bisenet models; bisenet export --help")
    parser.add_argument("--version", action="version", version=f"bisenet {project_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in modules.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP,
                           epilog=f"Example: {mod.EXAMPLE}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
    return parser


def _load(name: str):
    return importlib.import_module(SUBCOMMANDS[name])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in SUBCOMMANDS:
        modules = {chosen: _load(chosen)}
    else:
        # Listing only: describe every subcommand without importing heavy packages.
        modules = {}
        for name in SUBCOMMANDS:
            try:
                modules[name] = _load(name)
            except ImportError:
                continue
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    previous = signal.getsignal(signal.SIGTERM)
    if args.command != "run":   # `run` has its own handlers: it drains and finalizes its outputs
        remove_temp_files_on_sigterm()
    from app.setting_rules import check_command_args

    def run(a):
        return modules[args.command].run(check_command_args(modules[args.command], a))

    try:
        return run_with_one_line_errors(f"bisenet {args.command}", run, args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def remove_temp_files_on_sigterm() -> None:
    """SIGTERM ends the process by raising SystemExit(143), so `finally` blocks run and the
    temp files of interrupted writes (export, calibration, engine builds, checkpoints) are
    removed (core/sidecar.py atomic_write / atomic_path). Left alone when someone else
    (e.g. torchrun) installed a handler."""
    def on_sigterm(signum, _frame):
        raise SystemExit(128 + signum)

    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, on_sigterm)


# Exit status of a bug (sysexits.h EX_SOFTWARE): never 2, which means "fix your input".
BUG_EXIT = 70
PROJECT_PACKAGES = {"app", "core", "engines", "training", "calibration", "bench", "run_camera"}


def run_with_one_line_errors(prog: str, run, args) -> int:
    """User-facing failures (BisenetError: bad values, missing files, unusable models) and a
    missing optional package become one line on stderr and the error's exit code. Anything
    else is a bug: one line saying so, then the traceback, exit BUG_EXIT."""
    try:
        return int(run(args) or 0)
    except BisenetError as e:
        print(f"{prog}: error: {first_line(e)}", file=sys.stderr)
        return e.exit_code
    except ImportError as e:
        if not is_missing_optional_package(e):
            return report_bug(prog, e)
        print(f"{prog}: error: {first_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        return report_bug(prog, e)


def is_missing_optional_package(e: ImportError) -> bool:
    """An ImportError of a package outside the project (its message names what to install);
    a failed import of the project's own code is a bug."""
    return (e.name or "").split(".")[0] not in PROJECT_PACKAGES


def report_bug(prog: str, e: BaseException) -> int:
    print(f"{prog}: internal error (a bug, please report it): {type(e).__name__}: {first_line(e)}; "
          "traceback below", file=sys.stderr)
    traceback.print_exception(e, file=sys.stderr)
    return BUG_EXIT


if __name__ == "__main__":
    sys.exit(main())
