"""Bounded disk: the one retention mechanism for everything the app keeps writing.

    Retention      a set of files the app wrote (glob patterns under one folder) kept under a
                   byte cap, an age and/or a count, oldest first; used by rotated logs
                   (RotatingLog below), segmented video outputs (app/sinks.py), event clips
                   (app/analytics/clips.py) and any later recorder of segments
    RotatingLog    a line log (CSV with its header in every part, or JSON lines) rotated by
                   size: the live file keeps its name, each full part is renamed by the time it
                   started (lat.2026-12-07T001500.123.csv); the newest `keep` parts stay
    timed_name     out.mp4 -> out.<UTC start time>.mp4, the name of a part or a segment

Retention deletes only files that match its own patterns, never follows a symbolic link (a
link, or a file under a linked folder, is skipped, not counted) and counts what it deleted.

A full disk (ENOSPC, a quota, a file-size limit) pauses a writer with one line; what is not
written meanwhile is counted, and the writer tries again every RETRY_S and says when it writes
again. A log's row is written whole or not at all (a failed write is cut back), so the parts
concatenated hold exactly the rows that were written.
"""
from __future__ import annotations

import csv
import io
import os
import stat
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from core.errors import file_error

RETRY_S = 5.0                       # a paused writer tries again this often
STAMP = "%Y-%m-%dT%H%M%S"           # + .mmm: names sort by time
STAMP_GLOB = "????-??-??T??????.???"
DEFAULT_LOG_KEEP = 10


def _stamp(t: float) -> str:
    ms = int(round(t * 1000))
    return datetime.fromtimestamp(ms // 1000, timezone.utc).strftime(STAMP) + f".{ms % 1000:03d}"


class NameClock:
    """Names by UTC time, each later than the one before (two parts in one millisecond still
    get distinct names in the right order)."""

    def __init__(self):
        self.last_ms = -1

    def __call__(self, path: Path, t: float | None = None) -> Path:
        ms = max(int(round((time.time() if t is None else t) * 1000)), self.last_ms + 1)
        self.last_ms = ms
        return timed_name(path, ms / 1000)


def timed_name(path: str | Path, t: float) -> Path:
    """out.mp4 -> out.2026-12-07T001500.123.mp4 (UTC, the time t)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.{_stamp(t)}{path.suffix}")


def timed_glob(path: str | Path) -> str:
    """The glob pattern of every timed_name of `path` (in its folder)."""
    path = Path(path)
    return f"{path.stem}.{STAMP_GLOB}{path.suffix}"


def is_full(e: BaseException) -> bool:
    """The disk (or the quota, or the file-size limit) is full."""
    import errno

    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class Retention:
    """Files under `folder` matching `patterns` (globs relative to it, e.g. 'lat.*.csv' or
    '*/*.mp4'), kept under `max_bytes`, younger than `max_age_s` and at most `max_files`,
    oldest (modification time) deleted first. `sweep(protect)` never deletes `protect` (the
    file being written) and does not count it against the caps. `name_ok(name)`, when given,
    narrows the patterns to the exact names the writer makes (a glob alone would also match a
    file somebody else put there)."""

    def __init__(self, folder: str | Path, patterns, max_bytes: float | None = None, max_age_s: float | None = None,
                 max_files: int | None = None, name_ok=None):
        self.folder = Path(folder)
        self.patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        self.name_ok = name_ok
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.max_age_s, self.max_files = max_age_s, max_files
        self.deleted_files = 0
        self.deleted_bytes = 0
        self.lock = threading.Lock()

    @property
    def bounded(self) -> bool:
        return any(v is not None for v in (self.max_bytes, self.max_age_s, self.max_files))

    def files(self) -> list[tuple[int, str, int, Path]]:
        """[(mtime ns, name, size, path)] of the regular files it owns, oldest first."""
        seen, out = set(), []
        for pattern in self.patterns:
            for path in self.folder.glob(pattern):
                if path in seen or (self.name_ok is not None and not self.name_ok(path.name)):
                    continue
                seen.add(path)
                st = self._own(path)
                if st is not None:
                    out.append((st.st_mtime_ns, path.name, st.st_size, path))
        out.sort()
        return out

    def _own(self, path: Path):
        """lstat of `path` when it is a regular file reached without a link, else None."""
        try:
            rel = path.relative_to(self.folder)
            here = self.folder
            for part in rel.parts[:-1]:
                here = here / part
                if stat.S_ISLNK(os.lstat(here).st_mode):
                    return None
            st = os.lstat(path)
        except (OSError, ValueError):
            return None   # gone meanwhile, or not under the folder
        return st if stat.S_ISREG(st.st_mode) else None

    def sweep(self, protect=()) -> int:
        """Delete what is over the caps; -> the number of files deleted now."""
        if not self.bounded:
            return 0
        protect = {Path(p) for p in protect}
        with self.lock:
            files = [f for f in self.files() if f[3] not in protect]
            total = sum(f[2] for f in files)
            count = len(files)
            too_old = time.time_ns() - int(self.max_age_s * 1e9) if self.max_age_s is not None else None
            deleted = 0
            for mtime, _, size, path in files:
                over = ((self.max_bytes is not None and total > self.max_bytes)
                        or (self.max_files is not None and count > self.max_files)
                        or (too_old is not None and mtime < too_old))
                if not over:
                    break   # oldest first: the rest are younger and fit
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
                except OSError:
                    continue   # not ours to force; the next sweep tries again
                else:
                    deleted += 1
                    self.deleted_bytes += size
                total -= size
                count -= 1
            self.deleted_files += deleted
            return deleted

    def counters(self) -> dict:
        return {"deleted": self.deleted_files} if self.deleted_files else {}


class Pause:
    """A writer's full-disk state: one line when it pauses, one when it writes again, the
    count of what was not written between them."""

    def __init__(self, what: str, unit: str, log=None, retry_s: float = RETRY_S):
        self.what, self.unit, self.retry_s = what, unit, retry_s
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.since = None          # monotonic time of the last failure while paused
        self.not_written = 0       # in all, over the run
        self.lost_now = 0          # in the current pause
        self.error = ""            # the first failure's line

    @property
    def paused(self) -> bool:
        return self.since is not None

    def may_try(self) -> bool:
        return self.since is None or time.monotonic() - self.since >= self.retry_s

    def failed(self, path, e: OSError, lost: int = 0) -> None:
        """A write to `path` failed: pause (one line the first time); `lost` items were not written."""
        if self.since is None:
            line = f"{self.what} {file_error(path, e)}"
            self.error = self.error or line
            self.log(f"error: {line}; paused, {self.unit} not written are counted, trying again every "
                     f"{self.retry_s:g} s; the run goes on")
        self.since = time.monotonic()
        self.skipped(lost)

    def skipped(self, n: int = 1) -> None:
        self.not_written += n
        self.lost_now += n

    def resumed(self) -> None:
        if self.since is not None:
            self.log(f"{self.what.rstrip(':')}: writing again; {self.lost_now} {self.unit} were not written")
        self.since, self.lost_now = None, 0


def csv_line(values) -> str:
    """One CSV record (quoted where it needs to be), with its \\r\\n: a RotatingLog's header or row."""
    out = io.StringIO()
    csv.writer(out).writerow(values)
    return out.getvalue()


class RotatingLog:
    """A log of whole lines, rotated by size. `write(text)` writes one record (complete lines)
    whole or not at all; -> whether it was written. `header` (a CSV's first line) starts every
    part. max_bytes None: one file, never rotated. mode 'a' appends to an existing live file."""

    def __init__(self, path: str | Path, what: str, header: str = "", max_bytes: float | None = None,
                 keep: int | None = None, mode: str = "w", log=None, retry_s: float = RETRY_S):
        self.path = Path(path)
        self.header = header.encode()
        self.max_bytes = None if max_bytes is None else max(int(max_bytes), 1)
        self.names = NameClock()
        self.retention = Retention(self.path.parent, timed_glob(self.path),
                                   max_files=DEFAULT_LOG_KEEP if keep is None else keep)
        self.pause = Pause(what, "rows", log=log, retry_s=retry_s)
        self.lock = threading.Lock()
        self.rotated = 0
        # O_APPEND: every write goes to the end, also after a failed one was cut back
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if mode == "w" else 0)
        self.fd = os.open(self.path, flags, 0o644)   # OSError here: the caller's one line
        self.size = os.fstat(self.fd).st_size
        self.started = time.time()
        if self.size == 0 and self.header:
            self._put(self.header)

    @property
    def not_written(self) -> int:
        return self.pause.not_written

    def write(self, text: str) -> bool:
        data = text.encode()
        with self.lock:
            if self.fd is None:
                return False
            if not self.pause.may_try():
                self.pause.skipped()
                return False
            try:
                if self.max_bytes is not None and self.size > len(self.header) and \
                        self.size + len(data) > self.max_bytes:
                    self._rotate()
                if self.size == 0 and self.header:
                    self._put(self.header + data)
                else:
                    self._put(data)
            except OSError as e:
                self.pause.failed(self.path, e, lost=1)
                return False
            self.pause.resumed()
            return True

    def new_header(self, header: str) -> None:
        """The columns changed (a zone added by a reload): the part written so far is closed
        as a rotated part with its own header, the live file starts again with `header` (a
        live file with no row yet is just started again)."""
        with self.lock:
            if self.fd is None:
                return
            had_rows = self.size > len(self.header)
            self.header = header.encode()
            try:
                if had_rows:
                    self._rotate()
                else:
                    os.ftruncate(self.fd, 0)
                    self.size = 0
                if self.size == 0 and self.header:
                    self._put(self.header)
            except OSError as e:
                self.pause.failed(self.path, e)

    def _put(self, data: bytes) -> None:
        """All of `data` or none of it (a short write is cut back)."""
        start, done = self.size, 0
        try:
            while done < len(data):
                done += os.write(self.fd, data[done:])
        except OSError:
            if done:
                try:
                    os.ftruncate(self.fd, start)
                except OSError:
                    pass
            raise
        self.size = start + done

    def _rotate(self) -> None:
        part = self.names(self.path, self.started)
        os.close(self.fd)
        self.fd = None
        try:
            os.rename(self.path, part)
        finally:   # renamed or not, write on in a fresh (or the same) live file
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            self.size = os.fstat(self.fd).st_size
        self.started = time.time()
        self.rotated += 1
        self.retention.sweep()

    def parts(self) -> list[Path]:
        """The rotated parts, oldest first, then the live file: their rows in order."""
        return [f[3] for f in sorted(self.retention.files(), key=lambda f: f[1])] + [self.path]

    def close(self) -> None:
        with self.lock:
            if self.fd is not None:
                try:
                    os.close(self.fd)
                except OSError:
                    pass
                self.fd = None
