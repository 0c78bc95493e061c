"""The README's commands run as written. Every fenced ```bash block that follows a
`<!-- runnable -->` line is run, in order, in one bash session from the checkout (as a newcomer
would after `./scripts/demo.sh`: the venv activated), with `set -euo pipefail`; the blocks keep
their frame counts short. A block that stops working fails this test, so the README stays true."""
import os
import re
import shutil
import subprocess

import pytest

from testkit.app_helpers import REPO, SAMPLE_VIDEO

MARK = "<!-- runnable -->"


def runnable_blocks(text: str) -> list[str]:
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            assert j < len(lines) and lines[j].strip() == "```bash", f"README line {i + 1}: {MARK} must precede ```bash"
            k = lines.index("```", j + 1)
            blocks.append("\n".join(lines[j + 1:k]))
            i = k
        i += 1
    return blocks


def test_runnable_blocks_are_found():
    blocks = runnable_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 4, "the README marks its runnable blocks with <!-- runnable -->"
    assert not any(re.search(r"^\s*\./scripts/(demo|test)\.sh", b, re.M) for b in blocks), \
        "the two set-up commands are not run from here (CI runs test.sh; demo.sh has its own test)"


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file() or shutil.which("ffmpeg") is None,
                    reason="needs ../shared/data and ffmpeg")
def test_readme_commands_run_as_written(tmp_path):
    script = "set -euo pipefail\n" + "\n".join(runnable_blocks((REPO / "README.md").read_text())) + "\n"
    (tmp_path / "readme.sh").write_text(script)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(tmp_path / "readme.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"a README command failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
