"""Run directories: config first, environment, tidy metrics, summary. Never append to another run's files."""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from toykit.configs import config_to_dict

__all__ = ["create_run_dir", "write_json", "read_json", "env_info", "MetricsWriter", "read_metrics", "iter_jsonl",
           "json_safe", "atomic_path", "check_run_dir", "check_run_name", "write_env", "new_run_dir", "discard_run_dir", "within_roots"]

DEFAULT_RUNS_ROOT = Path("runs")


def json_safe(obj: Any) -> Any:
    """Return ``obj`` with numpy/torch scalars and arrays turned into plain JSON values (NaN kept as null)."""
    if hasattr(obj, "tolist"):
        obj = obj.tolist()
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a directory and every file in it) to disk."""
    paths = [path] if not path.is_dir() else [*sorted(p for p in path.rglob("*") if p.is_file()), path]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _commit(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` onto ``path`` (a directory that already exists is swapped out first)."""
    _fsync(tmp)
    if tmp.is_dir() and path.is_dir():
        old = path.with_name(f".{path.name}.old")
        _remove(old)
        os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    else:
        os.replace(tmp, path)
    _fsync(path.parent)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary name next to ``path``; when the block ends without error, move it onto ``path``.

    The one writer of every file (or directory, e.g. a ``save_pretrained`` folder) a run writes: the block writes
    ``tmp``, which is then fsynced and renamed with ``os.replace``. A process killed inside the block leaves ``path``
    as it was (absent or the previous complete version), never half written; the stale hidden temporary is
    replaced by the next write.

    Example: ``with atomic_path(run_dir / "reference_logps.pt") as tmp: torch.save(obj, tmp)``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    _remove(tmp)
    try:
        yield tmp
        _commit(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temporary file, fsync, rename)."""
    path = Path(path)
    text = json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n"
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def read_json(path: str | Path) -> Any:
    """Read a JSON file (a UTF-8 byte-order mark is skipped); ValueError names the file and line when it is not."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}:{err.lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    except IsADirectoryError:
        raise ValueError(f"{path} is a directory, not a JSON file") from None


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _portable_argv(argv: list[str]) -> list[str]:
    """``sys.argv`` with the script path relative to the working directory (no machine paths in a result)."""
    if not argv or not os.path.isabs(argv[0]):
        return list(argv)
    try:
        return [os.path.relpath(argv[0]), *argv[1:]]
    except ValueError:  # another drive (Windows)
        return [os.path.basename(argv[0]), *argv[1:]]


def env_info(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, git sha and device: what a reader needs to reproduce a result."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "argv": _portable_argv(sys.argv),
    }
    for name in ("numpy", "torch", "sympy", "matplotlib", "transformers", "tokenizers", "streamlit", "sklearn"):
        mod = sys.modules.get(name)
        if mod is not None:
            info[name] = getattr(mod, "__version__", None)
    torch = sys.modules.get("torch")
    if torch is not None:
        info["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
        info["torch_threads"] = torch.get_num_threads()
    if extra:
        info.update(extra)
    return info


#: system folders no run may be written under.
_FORBIDDEN_ROOTS = tuple(Path(p) for p in ("/proc", "/sys", "/dev"))


def check_run_name(name: str, flag: str = "--phase") -> str:
    """Refuse a run or phase name that is not a plain file name (empty, '.', '..', or holding a path separator)."""
    if not isinstance(name, str) or not name.strip() or name in {".", ".."} or "/" in name or "\\" in name \
            or "\0" in name:
        raise ValueError(f"{flag} {name!r} must be a plain name (no '/', '\\', '..' or empty): it names a folder "
                         "under the runs root")
    return name


def check_run_dir(out_dir: str | Path | None, *, resume: bool = False, flag: str = "--out-dir") -> Path | None:
    """Check that ``out_dir`` can hold a new run (or, with ``resume``, is one), before anything is written.

    Refused with ValueError (FileExistsError for an existing run) naming ``flag``: an empty path (it would be the
    current directory), a path under a file or under /proc, /sys, /dev, a file, a directory that holds another run
    (``config.json``) or foreign metrics (``metrics.jsonl`` without ``config.json``), an unwritable parent.

    Returns:
        the path (None when ``out_dir`` is None: a fresh ``root/<time>-<name>`` is made later).
    """
    if out_dir is None:
        return None
    if not str(out_dir).strip():
        raise ValueError(f"{flag} is empty: it would write into the current directory; give a folder or leave "
                         f"{flag} out for runs/<time>-<name>")
    path = Path(out_dir)
    full = Path(os.path.abspath(path))
    for root in _FORBIDDEN_ROOTS:
        if full == root or root in full.parents:
            raise ValueError(f"{flag} {path} lies under {root}, a system folder; choose a folder of your own")
    existing = full
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != full and not existing.is_dir():
        raise ValueError(f"{flag} {path} lies under {existing}, which is a file, not a folder")
    if full.exists() and not full.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: cannot write in {existing} (permission denied)")
    if resume:
        return path
    if (full / "config.json").exists():
        raise FileExistsError(f"{path} already holds a run (config.json exists); choose another {flag}")
    if (full / "metrics.jsonl").exists():
        raise ValueError(f"{flag} {path} holds a metrics.jsonl but no config.json: not a run to continue, and new "
                         f"rows must not be appended to it; choose another {flag}")
    return path


def create_run_dir(cfg: Any, name: str, out_dir: str | Path | None = None, root: str | Path = DEFAULT_RUNS_ROOT,
                   env_extra: dict[str, Any] | None = None) -> Path:
    """Create a fresh run directory and write ``config.json`` (first) and ``env.json``.

    Callers check everything else first (config, inputs, ``check_run_dir``) so that a refused input leaves no
    folder behind; the checks of ``check_run_dir`` are repeated here.

    Args:
        cfg: the resolved dataclass config of the run.
        name: a short plain name used for the default directory (``root/<time>-<name>``).
        out_dir: an explicit directory; it must not already hold a run (refused, never overwritten).
    """
    check_run_name(name)
    check_run_dir(out_dir)  # before Path(''): it would be '.', the current directory
    if out_dir is None:
        check_run_dir(root, resume=True, flag="runs root")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = Path(root) / f"{stamp}-{name}"
        k = 1
        while out_dir.exists():
            out_dir = Path(root) / f"{stamp}-{name}-{k}"
            k += 1
    out_dir = Path(out_dir)
    check_run_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", config_to_dict(cfg) if not isinstance(cfg, dict) else cfg)
    write_env(out_dir, env_extra)
    return out_dir


def within_roots(path: str | Path, roots: Iterable[str | Path]) -> bool:
    """Whether ``path`` lies in (or is) one of ``roots`` once symlinks and ``..`` are resolved."""
    full = Path(os.path.realpath(Path(path).expanduser()))
    for root in roots:
        real = Path(os.path.realpath(Path(root).expanduser()))
        if full == real or real in full.parents:
            return True
    return False


def discard_run_dir(run_dir: str | Path) -> None:
    """Remove a run directory that holds nothing but what ``create_run_dir`` wrote (a run refused at its inputs).

    A refused input must leave nothing behind; a directory with any other file (a run's output) is kept.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    if {p.name for p in run_dir.iterdir()} <= {"config.json", "env.json", ".config.json.tmp", ".env.json.tmp"}:
        shutil.rmtree(run_dir)


@contextlib.contextmanager
def new_run_dir(cfg: Any, name: str, out_dir: str | Path | None = None, root: str | Path = DEFAULT_RUNS_ROOT,
                env_extra: dict[str, Any] | None = None) -> Iterator[Path]:
    """``create_run_dir`` for a block that may refuse its inputs: on ValueError the new folder is removed again.

    Used where an input can only be checked by starting the work (e.g. reading a data folder inside ``run(cfg)``);
    folders created on the way (a missing runs root) are removed too when they are left empty.
    """
    check_run_dir(out_dir)
    target = Path(out_dir) if out_dir is not None else Path(root)
    first_new = None
    probe = Path(os.path.abspath(target))
    while not probe.exists():
        first_new, probe = probe, probe.parent
    run_dir = create_run_dir(cfg, name, out_dir=out_dir, root=root, env_extra=env_extra)
    try:
        yield run_dir
    except ValueError:
        discard_run_dir(run_dir)
        if first_new is not None:
            for folder in [Path(os.path.abspath(run_dir)), *Path(os.path.abspath(run_dir)).parents]:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()
                if folder == first_new:
                    break
        raise


def write_env(run_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write the run's ``env.json`` (versions, git sha, device); a resumed run rewrites it only when it is missing."""
    return write_json(Path(run_dir) / "env.json", env_info(extra))


class MetricsWriter:
    """Append tidy rows to this run's own ``metrics.jsonl``, one JSON object per line, flushed per row."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fh = self.path.open("a")

    def write(self, row: dict[str, Any]) -> None:
        self._fh.write(json.dumps(json_safe(row)) + "\n")
        self._fh.flush()

    def write_many(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            self._fh.write(json.dumps(json_safe(row)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def iter_jsonl(path: str | Path, *, skip_cut_last_line: bool = False) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of a JSONL file.

    The one JSONL reader of the project (metrics, preference pairs, probe sets, the paper's logs): a line that is not
    valid JSON, or not a JSON object, or not UTF-8 text (latin-1, binary), raises ValueError naming the file and line.
    A UTF-8 byte-order mark is skipped. Python's json accepts the bare NaN that the paper's code wrote.

    Args:
        skip_cut_last_line: ignore a last line that lacks its newline and is not valid JSON (a run killed while it
            wrote that row); readers of live or killed runs set it.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory, not a JSONL file")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} is not a regular file (a device or pipe?); give a JSONL file")
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not UTF-8 text (byte {raw[err.start]:#04x} at column "
                                 f"{err.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                if skip_cut_last_line and not raw.endswith(b"\n") and not fh.read(1):
                    return
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file; a malformed line raises ValueError naming the file and line."""
    return [row for _, row in iter_jsonl(path)]
