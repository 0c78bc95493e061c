"""`python -m training.launch --nproc_per_node N -m training.train ...`: torchrun itself (the
same arguments, the same workers), ending the way `bisenet train` ends when Ctrl-C or SIGTERM
stops it. torchrun's agent turns the signal into a SignalException, forwards it to the workers
(each finishes its iteration; rank 0 saves latest.pth and prints the stop line) and then dies
in a long traceback with exit 1; here the same stop is one line and the shell's code for the
signal (130 for Ctrl-C, 143 for SIGTERM), so `--resume` scripts can tell a stop from a failure.
"""
from __future__ import annotations

import sys


def main(argv=None) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as e:   # the workers have stopped (torchrun waited for them)
        print(f"training.launch: stopped by {e.sigval.name}; the workers finished their iteration "
              "(continue with --resume)", file=sys.stderr)
        return 128 + int(e.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
