"""Run directories: config first, environment, tidy metrics, summary. Never append to another run's files."""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

from toykit.configs import config_to_dict

__all__ = ["create_run_dir", "write_json", "read_json", "env_info", "MetricsWriter", "read_metrics", "iter_jsonl",
           "json_safe"]

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


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def env_info(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions, git sha and device: what a reader needs to reproduce a result."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_sha": _git_sha(),
        "argv": sys.argv,
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


def create_run_dir(cfg: Any, name: str, out_dir: str | Path | None = None, root: str | Path = DEFAULT_RUNS_ROOT,
                   env_extra: dict[str, Any] | None = None) -> Path:
    """Create a fresh run directory and write ``config.json`` (first) and ``env.json``.

    Args:
        cfg: the resolved dataclass config of the run.
        name: a short name used for the default directory (``root/<time>-<name>``).
        out_dir: an explicit directory; it must not already hold a run (refused, never overwritten).
    """
    if out_dir is None:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out_dir = Path(root) / f"{stamp}-{name}"
        k = 1
        while out_dir.exists():
            out_dir = Path(root) / f"{stamp}-{name}-{k}"
            k += 1
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        raise FileExistsError(f"{out_dir} already holds a run (config.json exists); choose another --out-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", config_to_dict(cfg) if not isinstance(cfg, dict) else cfg)
    write_json(out_dir / "env.json", env_info(env_extra))
    return out_dir


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


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line of a JSONL file.

    The one JSONL reader of the project (metrics, preference pairs, probe sets, the paper's logs): a line that is not
    valid JSON, or not a JSON object, raises ValueError naming the file and line. Python's json accepts the bare NaN
    that the paper's code wrote.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg} at column {err.colno})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read a ``metrics.jsonl`` file; a malformed line raises ValueError naming the file and line."""
    return [row for _, row in iter_jsonl(path)]
