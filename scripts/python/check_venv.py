"""Compares a venv's installed distributions with requirements.lock, exactly.

    VENV/bin/python scripts/python/check_venv.py [LOCK]

Exit 0 when every package in the lock is installed at its pinned version and nothing else is
installed (pip and setuptools, which `python -m venv` puts in every venv, and Kiln's own
package, which scripts/python-package.sh builds from this repository, aside); otherwise
prints each difference and exits 1. Used by scripts/setup.sh (is the venv up to date?) and by
the tidy tests (does the venv the tests ran with match the committed lock?).
"""

from __future__ import annotations

import re
import sys
from importlib.metadata import distributions
from pathlib import Path

BOOTSTRAP = {"pip", "setuptools"}
# Built from this repository (crates/python), not from PyPI.
OWN = {"kiln"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            pins[norm(m.group(1))] = m.group(2)
    return pins


def main() -> int:
    lock = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("requirements.lock")
    want = locked(lock)
    if not want:
        print(f"{lock}: no pinned packages found", file=sys.stderr)
        return 1
    have = {norm(d.metadata["Name"]): d.version for d in distributions()}
    problems = []
    for name, ver in sorted(want.items()):
        if name not in have:
            problems.append(f"missing: {name}=={ver}")
        elif have[name] != ver:
            problems.append(f"version: {name} is {have[name]}, the lock pins {ver}")
    for name in sorted(set(have) - set(want) - BOOTSTRAP - OWN):
        problems.append(f"not in the lock: {name}=={have[name]}")
    for p in problems:
        print(p)
    if not problems:
        print(f"venv matches {lock.name}: {len(want)} packages")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
