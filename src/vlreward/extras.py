"""Which of the distribution's extras are installed, read from its own metadata (pyproject.toml is the one list).

``vlreward`` installs with extras (``serve``, ``train``, ...). The command line asks this module whether
an extra's requirements are present, without importing them, so ``vlreward --help`` stays fast and a
missing extra is reported in one line instead of a traceback.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, requires

DISTRIBUTION = "vlreward"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def _requirements(extra: str) -> list[tuple[str, list[str]]]:
    """(distribution name, its extras) that ``vlreward[extra]`` adds, as declared in the metadata."""
    found = []
    for line in requires(DISTRIBUTION) or []:
        requirement, _, marker = line.partition(";")
        if extra not in _EXTRA_MARKER.findall(marker):
            continue
        match = _NAME.match(requirement)
        if match:
            found.append((match.group(1), [e.strip() for e in (match.group(2) or "").split(",") if e.strip()]))
    return found


def _installed(name: str) -> bool:
    try:
        distribution(name)
    except PackageNotFoundError:
        return False
    return True


@cache
def missing(extra: str) -> tuple[str, ...]:
    """The distributions of ``vlreward[extra]`` (nested extras included) that are not installed."""
    absent: list[str] = []
    for name, nested in _requirements(extra):
        if name.lower() == DISTRIBUTION:
            absent += [n for e in nested for n in missing(e) if n not in absent]
        elif not _installed(name):
            absent.append(name)
    return tuple(absent)


def installed(extra: str) -> bool:
    """Whether everything ``vlreward[extra]`` asks for is installed."""
    return not missing(extra)


def install_hint(extra: str) -> str:
    """The one line that tells a user how to get an extra."""
    return f"pip install 'vlreward[{extra}]'"
