"""Errors a user can act on. `BisenetError` is the one project error type: its message is one
line that names the flag or file and says what to do, and `exit_code` is what the commands
exit with. Any other exception reaching a command is a bug (app/cli.py prints it as one)."""
from __future__ import annotations

from core.redact import redact_url


class BisenetError(Exception):
    """A failure the user can fix; printed as one line, the command exits `exit_code`."""

    exit_code = 2


class InputError(BisenetError, ValueError):
    """A bad input: one line that names the flag or file and says what to do (exit 2)."""


class MissingFileError(BisenetError, FileNotFoundError):
    """A file or folder the user named does not exist; one line that says what to pass (exit 2).
    Still a FileNotFoundError for callers that catch that."""


class SetupError(BisenetError, RuntimeError):
    """This machine's set-up cannot do what was asked (a package, provider, driver or tool is
    missing or failed); one line that says what to install or do (exit 2)."""


MAX_LINE = 1000   # characters: a one-line error is read, not scrolled


def first_line(e: BaseException) -> str:
    """An exception as one line for a one-line error: its first non-empty text, else its type;
    passwords in URLs redacted (core/redact.py), cut at MAX_LINE characters."""
    text = str(e).strip()
    line = redact_url(text.splitlines()[0]) if text else type(e).__name__
    return line if len(line) <= MAX_LINE else line[:MAX_LINE - 3] + "..."



_WHAT_TO_DO = {28: "the disk is full: free some space or write somewhere else",
               36: "the name is too long: use a shorter file name",
               2: "its folder does not exist (removed?): recreate it or pick another place",
               13: "no permission: pick a place you can write to",
               30: "the file system is read-only: pick a place you can write to",
               122: "the disk quota is used up: free some space or write somewhere else",
               27: "the file is too large for this system's limit: write a shorter run or raise the limit"}


def file_error(path, e: OSError, doing: str = "write") -> str:
    """An OSError on a file as one line naming the file and what to do, not just
    '[Errno 28] No space left on device'."""
    what = e.strerror or first_line(e)
    todo = _WHAT_TO_DO.get(e.errno, "check the path and the disk")
    return f"cannot {doing} {path} ({what}); {todo}"
