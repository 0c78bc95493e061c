"""Run every tests/test_*.py in its own pytest process, in order, and end with one line
`N passed, N failed, N skipped` (the counts of all files); exit 1 when any file failed or
crashed. Used by scripts/test.sh for the whole suite."""
from __future__ import annotations

import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
COUNT = re.compile(r"(\d+) (passed|failed|skipped|error|errors|deselected|xfailed|xpassed)")


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    bad, t0 = [], time.monotonic()
    for path in sorted((REPO / "tests").glob("test_*.py")):
        name = str(path.relative_to(REPO))
        started, cpu = time.monotonic(), _children_cpu()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = proc.stdout.rstrip().splitlines()
        last = lines[-1] if lines else ""
        for n, kind in COUNT.findall(last):
            kind = "errors" if kind in ("error", "errors") else kind
            if kind in totals:
                totals[kind] += int(n)
        print(f"{name}: {last.strip('= ') or 'no output'} ({time.monotonic() - started:.0f} s wall, "
              f"{_children_cpu() - cpu:.0f} s CPU)", flush=True)
        if proc.returncode not in (0, 5):   # 5: nothing collected (all skipped at import)
            bad.append(name)
            print(proc.stdout[-6000:], flush=True)
            if proc.returncode < 0 or not COUNT.search(last):
                totals["errors"] += 1   # a crash: no summary line of its own
    print(f"{len(bad)} file(s) failed: {', '.join(bad)}" if bad else "every test file passed",
          f"({time.monotonic() - t0:.0f} s)")
    print(f"{totals['passed']} passed, {totals['failed'] + totals['errors']} failed, {totals['skipped']} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
