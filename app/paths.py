"""Where the app's folder and file boxes may look: the project's runs/ and results/ roots unless widened.

A text box that reads any path would let whoever reaches the app list the machine's folders (``/`` scanned the whole
filesystem). Every page resolves a typed path through :func:`resolve_under_roots`, which refuses a path outside
the roots, symlinks and ``..`` included (``toykit.runs.within_roots``). The roots are ``runs/`` and ``results/`` of
the repository and of the current directory, and the reference data ``../shared/data`` when it exists. Widen them on
the command line:

    streamlit run app/Home.py -- --roots /data/my_runs /data/paper_logs
    LDT_APP_ROOTS=/data/my_runs:/data/paper_logs streamlit run app/Home.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from toykit.runs import within_roots

__all__ = ["ROOTS_ENV", "allowed_roots", "resolve_under_roots"]

ROOTS_ENV = "LDT_APP_ROOTS"
_REPO = Path(__file__).resolve().parents[1]


def _argv_roots(argv: list[str]) -> list[Path]:
    """The folders after ``--roots`` in the script's arguments (``streamlit run app/Home.py -- --roots A B``)."""
    roots, taking = [], False
    for arg in argv:
        if arg == "--roots":
            taking = True
        elif arg.startswith("--"):
            taking = False
        elif taking:
            roots.append(Path(arg))
    return roots


def allowed_roots() -> list[Path]:
    """The folders the app may read: the defaults, then ``--roots`` folders, then those in the env variable."""
    roots = [base.joinpath(name) for base in (_REPO, Path.cwd()) for name in ("runs", "results")]
    shared = _REPO.parent.joinpath("shared", "data")
    if shared.is_dir():
        roots.append(shared)
    roots.extend(_argv_roots(sys.argv[1:]))
    roots.extend(Path(p) for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip())
    return list(dict.fromkeys(Path(os.path.realpath(r.expanduser())) for r in roots))


def resolve_under_roots(text: str, what: str = "folder") -> Path:
    """Return ``text`` as a Path when it lies under an allowed root; ValueError (one line, no listing) otherwise."""
    roots = allowed_roots()
    if within_roots(text.strip(), roots):
        return Path(text.strip()).expanduser()
    shown = ", ".join(str(r) for r in roots[:4])
    raise ValueError(f"{what} {text.strip()!r} is outside the folders this app reads ({shown}); widen them with "
                     f"`streamlit run app/Home.py -- --roots DIR` or {ROOTS_ENV}=DIR")
