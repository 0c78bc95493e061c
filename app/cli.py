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

# subcommand -> module. Build time (torch) and run time (no torch) side by side.
SUBCOMMANDS = {
    "models": "engines.zoo",
    "export": "engines.export",
    "train": "training.train",
    "eval": "training.evaluate",
    "prepare": "training.prepare",
    "calibrate": "calibration.calibrate",
    "build": "engines.tensorrt_build",
    "run": "app.run",
    "latency-plot": "app.latency_plot",
    "triton-repo": "engines.triton_repo",
    "serve-triton": "engines.triton_serve",
    "doctor": "app.doctor",
}


class CliError(Exception):
    """An input problem: printed as one line `bisenet: error: ...`, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse with its errors as one line (`prog: error: ...`, exit 2), without the usage
    block: every input error of the project looks the same (`--help` shows the usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0]} (see --help)\n")


def build_parser(modules: dict) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="bisenet", description="BiSeNetV1 edge segmentation: model zoo, export, training, "
        "INT8 calibration, TensorRT builds and the live app.",
        epilog="Example: bisenet models; bisenet export --help")
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
    from app.validate import check_command_args

    def run(a):
        return modules[args.command].run(check_command_args(args.command, a))

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


def run_with_one_line_errors(prog: str, run, args) -> int:
    """Input problems (bad values, missing files, missing packages) become one line on
    stderr and exit code 2, instead of a traceback."""
    try:
        return int(run(args) or 0)
    except (CliError, ValueError, OSError, RuntimeError, ImportError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
