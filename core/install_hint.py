"""Install hints that work where the user is: the package names themselves, and the
project's extra to install from the checkout (the project is not on a package index, so
`pip install 'bisenet-edge[serve]'` would name a package no index has)."""
from __future__ import annotations


def extra_hint(extra: str, packages: str) -> str:
    """`pip install PACKAGES (the 'EXTRA' extra: pip install -e '.[EXTRA]' from the checkout)`."""
    return f"pip install {packages} (the '{extra}' extra: pip install -e '.[{extra}]' from the checkout)"


def project_version() -> str:
    """The installed package's version, else pyproject.toml's (a checkout run with
    PYTHONPATH=. and nothing installed)."""
    from importlib import metadata
    try:
        return metadata.version("bisenet-edge")
    except metadata.PackageNotFoundError:
        pass
    import re
    from pathlib import Path
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    try:   # a regex, not tomllib: Python 3.10 is supported and has no tomllib
        found = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1) if found else "unknown"
