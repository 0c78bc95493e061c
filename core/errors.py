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

