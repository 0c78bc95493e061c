"""Every documented command runs as written. README.md and docs/*.md are walked block by block:
every command block (a fenced ```bash or ```python block, or an indented block whose lines run
a command) comes right after one of two marks,

    <!-- runnable -->                   run here: every runnable block of a document, in order, in
                                        one bash session from the checkout (as a newcomer would
                                        after ./scripts/demo.sh: the venv activated, README's first
                                        block done), `set -euo pipefail`, short frame counts
    <!-- needs: KIND: reason -->        needs what this machine lacks (KIND one of NEEDS)

and every command block, runnable or not, names only flags its command's `--help` lists and
only files that are shipped (SHIPPED) or made by an earlier command of the same document (or by
README's first block); a `needs:` block may also name a file its mark names (a checkpoint
trained elsewhere, a dataset this machine lacks). A block that stops working, a flag the program lacks or a file nothing
makes fails here, so the docs stay true."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from testkit.app_helpers import REPO, SAMPLE_VIDEO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = "<!-- runnable -->"
NEEDS_MARK = re.compile(r"<!-- needs: ([a-z ]+): (\S.*\S) -->")
NEEDS = {"gpu", "jetson", "camera", "display", "remote server", "network", "docker", "root", "time", "setup", "dataset",
         "checkpoint"}

# Files a doc may name without making them: shipped in the checkout or in ../shared (each is checked to exist).
SHIPPED = {
    "run_camera.py", "../shared/data/samples/camvid_0016E5_15fps.mp4", "../shared/models/camvid_r18-d32_cpu.pth",
}
SHIPPED_FOLDERS = ("bench/", "scripts/", "tests/", "testkit/", "configs/")

# Programs whose flags are this project's (checked against their --help); the others' are not ours.
PROJECT_PROGRAMS = ("bisenet", "python", "python3", ".venv/bin/python", ".venv/bin/bisenet", "torchrun")
OTHER_PROGRAMS = ("pip", "sudo", "apt", "docker", "ffplay", "ffmpeg", "bash", "nice", "cd",
                  "tritonserver", "kubectl", "curl", "./scripts/demo.sh", "./scripts/test.sh", "vlc", "mkdir")
OUTPUT_FLAGS = {"-o", "--out", "--output", "--latency-log", "--json", "--coverage-log", "--events-log",
                "--clips-dir", "--work-dir", "--trt-cache", "--prepare-carry", "--workdir", "--timing-cache"}
FILE = re.compile(r"^[\w./+-]+\.(onnx|pth|pt|engine|mp4|mkv|avi|csv|jsonl|json|yaml|yml|png|jpg|calib|cache|"
                  r"txt|sh|py|pbtxt)$")
# What a command makes beside the file it is told to write (sidecars, calibrate's other outputs).
BESIDE = (".json", ".trt.onnx", ".trt.onnx.json", ".gate.json", ".calib")


@dataclass
class Block:
    line: int                       # 1-based line of the block's first line in its document
    lang: str                       # "bash" or "python"
    text: str
    mark: str | None                # "runnable", "needs: KIND: reason", or None
    commands: list = field(default_factory=list)   # token lists, one per command


# ---------------------------------------------------------------------------- reading a document
def code_blocks(text: str):
    """(line, lang, body, mark) of every fenced and indented code block; mark: the HTML comment
    line just before it (blank lines between allowed), else None."""
    lines, i, out = text.splitlines(), 0, []

    def mark_before(k):
        k -= 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        above = lines[k].strip() if k >= 0 else ""
        return above if above.startswith("<!--") else None

    while i < len(lines):
        fence = re.match(r"^```(\w*)\s*$", lines[i])
        if fence:
            end = lines.index("```", i + 1)
            out.append((i + 2, fence.group(1), "\n".join(lines[i + 1:end]), mark_before(i)))
            i = end + 1
            continue
        if lines[i].startswith("    ") and lines[i].strip() and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            body = [ln[4:] for ln in lines[i:j]]
            out.append((i + 1, "indented", "\n".join(body).rstrip(), mark_before(i)))
            i = j
            continue
        i += 1
    return out


def shell_words(line: str) -> list[str]:
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split, lex.commenters = True, "#"
    try:
        return list(lex)
    except ValueError:   # an unbalanced quote in an example: plain words are enough here
        return line.split("#")[0].split()


def commands_of(text: str) -> list[list[str]]:
    """The commands of a shell block, each a word list without env assignments, `nice -n N`
    or brackets; lines of output or diagrams (not starting with a known program) are left out."""
    out = []
    for line in re.sub(r"\\\n\s*", " ", text).splitlines():
        words, cmd = shell_words(line), []
        for w in [*words, ";"]:
            if w in (";", "&&", "||", "|", "&"):
                while cmd and re.match(r"^[A-Z_]+=", cmd[0]):
                    cmd.pop(0)
                if cmd[:1] == ["nice"]:
                    cmd = cmd[3:] if cmd[1:2] == ["-n"] else cmd[1:]
                if cmd and (cmd[0] in PROJECT_PROGRAMS or cmd[0] in OTHER_PROGRAMS):
                    out.append([c.strip("[]") for c in cmd])
                cmd = []
            else:
                cmd.append(w)
    return out


def blocks_of(path: Path) -> list[Block]:
    """The command blocks of a document: fenced bash/python, and indented blocks that run a command."""
    out = []
    for line, lang, body, mark in code_blocks(path.read_text()):
        if lang == "python":
            out.append(Block(line, "python", body, mark))
        elif lang in ("bash", "sh", "shell", "", "indented"):
            cmds = commands_of(body)
            if cmds:
                out.append(Block(line, "bash", body, mark, cmds))
    return out


# ---------------------------------------------------------------------------- what --help lists
def help_key(cmd: list[str]):
    """(which --help, the words after the program) for a command of this project; None for others."""
    prog, rest = cmd[0], cmd[1:]
    if prog in ("bisenet", ".venv/bin/bisenet"):
        sub = next((w for w in rest if not w.startswith("-")), None)
        return (("bisenet", sub) if sub else ("bisenet",)), rest[rest.index(sub) + 1:] if sub else rest
    if prog == "torchrun" or rest[:2] == ["-m", "training.launch"]:
        if "training.train" in rest:   # torchrun's own flags are torchrun's; the worker's are ours
            return ("bisenet", "train"), rest[rest.index("training.train") + 1:]
        return None, []
    if prog in ("python", "python3", ".venv/bin/python") and rest:
        if rest[0] == "run_camera.py":
            return ("bisenet", "run"), rest[1:]
        if rest[:2] == ["-m", "training.train"]:
            return ("bisenet", "train"), rest[2:]
        if rest[0].startswith("bench/") and rest[0].endswith(".py"):
            return ("python", rest[0]), rest[1:]
    return None, []


def help_command(key) -> list[str]:
    if key[0] == "bisenet":
        return [sys.executable, "-m", "app.cli", *key[1:], "--help"]
    return [sys.executable, key[1], "--help"]


def help_shown(key) -> str:
    """The --help command as a user types it."""
    return " ".join(key) + " --help"


def flags_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", text))


_help_cache: dict = {}


def helps(keys) -> dict:
    """key -> the flags its --help lists (the real --help, run in parallel, cached)."""
    missing = [k for k in set(keys) if k not in _help_cache]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def run(key):
        r = subprocess.run(help_command(key), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{' '.join(help_command(key))} failed: {r.stderr[-1000:]}"
        return key, flags_in(r.stdout)

    with ThreadPoolExecutor(4) as pool:
        _help_cache.update(pool.map(run, missing))
    return {k: _help_cache[k] for k in keys}


# ---------------------------------------------------------------------------- the checks
def shipped(name: str) -> bool:
    """In SHIPPED, or the project's own code and configs (bench/, scripts/, tests/, testkit/, configs/)."""
    return name in SHIPPED or (name.startswith(SHIPPED_FOLDERS) and (REPO / name).is_file())


def brought(name: str, mark: str | None) -> bool:
    """A `needs:` block may name a file nothing here makes when its mark names it (a checkpoint
    trained elsewhere, a dataset this machine lacks): `<!-- needs: checkpoint: X.pth, from ... -->`."""
    return bool(mark and mark != RUNNABLE and re.search(rf"(?<![\w./-]){re.escape(name)}(?![\w/-])", mark))


def made_by(cmd: list[str]) -> set[str]:
    """The files and folders a command writes (its output flags' values)."""
    return {cmd[i + 1].rstrip("/") for i, w in enumerate(cmd[:-1]) if w in OUTPUT_FLAGS}


def is_made(name: str, made: set[str]) -> bool:
    return any(name == m or name.startswith(m + "/") or any(name == m + s or name == m.removesuffix(".onnx") + s
                                                            for s in BESIDE) for m in made)


def files_named(cmd: list[str]) -> list[str]:
    """The files a command reads (its file-like words that are not outputs)."""
    outputs = made_by(cmd)
    return [w for w in cmd[1:] if FILE.match(w) and w.rstrip("/") not in outputs]


def python_files(text: str) -> list[str]:
    return [s for s in re.findall(r"""["']([^"'\s]+)["']""", text) if FILE.match(s)]


def problems(path: Path, first_made: set[str] = frozenset()) -> list[str]:
    """What is wrong with a document's command blocks: a missing or unknown mark, a flag its
    command's --help does not list, a file that is neither shipped nor made by an earlier block."""
    where = path.relative_to(REPO) if REPO in path.parents else path.name
    blocks, out = blocks_of(path), []
    keys = {help_key(c)[0] for b in blocks for c in b.commands} - {None}
    listed = helps(keys)
    made = set(first_made)
    for b in blocks:
        at = f"{where}:{b.line}"
        if b.mark is None:
            out.append(f"{at}: a command block without {RUNNABLE} or <!-- needs: KIND: reason -->")
        elif b.mark != RUNNABLE:
            m = NEEDS_MARK.fullmatch(b.mark)
            if not m or m.group(1) not in NEEDS:
                out.append(f"{at}: {b.mark!r}: write <!-- needs: KIND: reason -->, KIND one of {sorted(NEEDS)}")
        for cmd in b.commands:
            key, args = help_key(cmd)
            if key is not None:
                for flag in (w.split("=")[0] for w in args if re.match(r"^--?[A-Za-z]", w)):
                    if flag not in listed[key]:
                        out.append(f"{at}: {flag} is not in `{help_shown(key)}`")
            if cmd[0] in ("python", "python3", ".venv/bin/python") and len(cmd) > 1 and cmd[1].endswith(".py") \
                    and not (REPO / cmd[1]).is_file():
                out.append(f"{at}: {cmd[1]} is not in the checkout")
        for names, makes in ([(python_files(b.text), set())] if b.lang == "python" else
                             [(files_named(c), made_by(c)) for c in b.commands]):
            for name in names:
                if not shipped(name) and not is_made(name, made) and not brought(name, b.mark):
                    out.append(f"{at}: {name}: nothing before this makes it (and it is not shipped)")
            made |= makes
    return out


def readme_first_block() -> Block:
    first = next(b for b in blocks_of(REPO / "README.md") if b.mark == RUNNABLE)
    assert "artifacts/camvid.onnx" in first.text, first.text
    return first


def first_made() -> set[str]:
    return set().union(*(made_by(c) for c in readme_first_block().commands))


def script_of(path: Path) -> str:
    """One bash session: README's first block (for the other docs), then the runnable blocks."""
    parts = ["set -euo pipefail"]
    blocks = [b for b in blocks_of(path) if b.mark == RUNNABLE]
    if path.name != "README.md" or path.parent != REPO:
        parts.append(readme_first_block().text)
    for b in blocks:
        parts.append(b.text if b.lang == "bash" else f"python - <<'PYTHON_EXAMPLE'\n{b.text}\nPYTHON_EXAMPLE")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- the tests
def test_every_shipped_file_the_docs_may_name_exists():
    assert not [f for f in SHIPPED if not (REPO / f).is_file()]


def test_readme_set_up_commands_are_not_run_from_here():
    runnable = [b.text for b in blocks_of(REPO / "README.md") if b.mark == RUNNABLE]
    assert len(runnable) >= 4, "the README marks its runnable blocks with <!-- runnable -->"
    assert not any(re.search(r"^\s*\./scripts/(demo|test)\.sh", b, re.M) for b in runnable), \
        "the two set-up commands are not run from here (CI runs test.sh; demo.sh has its own test)"


def test_every_command_block_is_marked_and_names_only_listed_flags_and_made_files():
    made = first_made()
    found = [p for doc in DOCS for p in problems(doc, made if doc.name != "README.md" else frozenset())]
    assert not found, "\n".join(found)


def test_a_broken_copy_of_a_doc_fails_on_its_flag_its_file_and_its_mark(tmp_path):
    doc = tmp_path / "broken.md"
    doc.write_text("# Broken\n\n<!-- runnable -->\n```bash\n"
                   "python run_camera.py --source ../shared/data/samples/camvid_0016E5_15fps.mp4 \\\n"
                   "    --model artifacts/camvid.onnx --max-frame 5 --output artifacts/x.mp4\n```\n\n"
                   "<!-- needs: camera: a webcam -->\n\n"
                   "    python run_camera.py --source 0 --model artifacts/r18.onnx --output artifacts/x.mp4\n\n"
                   "and unmarked:\n\n    bisenet eval --model artifacts/x.onnx --dataset camvid\n")
    found = problems(doc, first_made())
    assert any("broken.md:5: --max-frame is not in `bisenet run --help`" in p for p in found), found
    assert any("broken.md:11: artifacts/r18.onnx: nothing before this makes it" in p for p in found), found
    assert any("broken.md:15: a command block without" in p for p in found), found
    assert len(found) == 4, found   # and artifacts/x.onnx; artifacts/camvid.onnx is README's, x.mp4 an output
    doc.write_text(doc.read_text().replace("--max-frame ", "--max-frames ").replace("r18.onnx", "x.mp4")
                   .replace("and unmarked:\n\n", "<!-- needs: dataset: none -->\n\n").replace("x.onnx", "camvid.onnx"))
    assert problems(doc, first_made()) == []


RUN_DOCS = [d for d in DOCS if any(b.mark == RUNNABLE for b in blocks_of(d))]


@pytest.mark.skipif(not SAMPLE_VIDEO.is_file() or shutil.which("ffmpeg") is None,
                    reason="needs ../shared/data and ffmpeg")
@pytest.mark.parametrize("doc", RUN_DOCS, ids=[d.name for d in RUN_DOCS])
def test_runnable_blocks_run_as_written(doc, tmp_path):
    (tmp_path / "doc.sh").write_text(script_of(doc))
    # PYTHONPATH: this checkout's code, also where .venv is another checkout's (a worktree).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}",
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["bash", str(tmp_path / "doc.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"a command of {doc.name} failed (exit {proc.returncode}):\n" \
                                 f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
