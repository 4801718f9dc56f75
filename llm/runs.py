"""Read what training runs wrote: run directories, tidy metrics, claims, and the paper's published metric logs.

The app's LLM page and scripts read runs through these functions only, so the file formats live in one place:

- an ``llm`` run directory holds ``config.json``, ``env.json`` and ``metrics.jsonl`` with tidy rows
  ``{step, examples_seen, phase, probe, statistic, value}``; training rows may instead carry TRL-named columns
  (``loss``, ``rewards/margins``, ...) that are melted into the same tidy shape with ``probe = "train"``;
- a validation run adds ``claims.json`` (the claims scoreboard) and ``report.md``;
- the paper's code wrote one Python-style JSON line (bare ``NaN``) per evaluation, every 1000 training examples,
  with keys ``logps_eval_prob_train/<probe>`` (summed log-prob, nats), ``<probe>_A_o`` (||A||_F averaged over
  tokens), ``argmax_prob_logits`` (teacher-forced argmax along the y+ prefix), ``p_e`` and ``energy``.

Every table returned here is a pandas DataFrame in long ("tidy") form; errors are ValueError naming the file and,
for line-oriented files, the line.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from toykit.runs import iter_jsonl, read_json

__all__ = [
    "TIDY_COLUMNS", "REDUCTIONS", "PAPER_EVAL_EVERY",
    "list_run_dirs", "is_llm_run", "default_run_folder", "read_report_parts", "PAPER_EVAL_CHOICES", "read_run_config", "read_run_metrics", "read_runs", "read_paper_metrics", "read_claims",
    "read_report", "select_reduction", "probe_curves", "training_curves", "overlay_with_paper", "curve_summary",
    "claims_score",
]

TIDY_COLUMNS = ("run", "phase", "step", "examples_seen", "probe", "statistic", "value")
TRAIN_PROBE = "train"
PAPER_EVAL_EVERY = 1000  # the paper's code evaluated the probes every 1000 training examples (PAPER.md section 7)
PAPER_EVAL_CHOICES = (100, 500, 1000)  # examples per evaluation used by the paper's runs (the log does not say which)
_PAPER_STEP_KEYS = ("step", "global_step", "examples_seen", "train_step")  # a restart shows as one of these falling
_GENERIC_STEMS = ("metrics", "prob_train", "prob_test", "log")  # file names that say nothing: label by folder

# How a response log-prob is reduced over its tokens: the statistic names written by llm.probes.
REDUCTIONS = {"summed": ("logp_sum",), "mean": ("logp_mean",)}

_PAPER_LOGP_PREFIX = "logps_eval_prob_train/"
_PAPER_NORM_SUFFIX = "_A_o"
_PAPER_SCALARS = {  # paper key -> (probe, statistic)
    "argmax_prob_logits": ("argmax_teacher_forced", "logp_sum"),
    "except_argmax_prob_logits": ("except_argmax", "logp_sum"),
    "p_e": ("chosen", "pi_minus_e_norm"),
    "energy": ("chosen", "energy"),
}


# ----------------------------------------------------------------------------------------------------------------------
# Run directories.

def list_run_dirs(folder: str | Path, llm_only: bool = False) -> list[Path]:
    """Return the run directories under ``folder`` (it or any sub-folder holding ``metrics.jsonl``), sorted.

    Args:
        llm_only: keep only runs of ``python -m llm`` / ProbeCallback (see :func:`is_llm_run`), not toy experiments.

    Raises:
        ValueError: ``folder`` does not exist or is not a directory.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"run folder {folder} does not exist or is not a directory")
    found = sorted({p.parent for p in folder.rglob("metrics.jsonl") if p.is_file()})
    return [d for d in found if is_llm_run(d)] if llm_only else found


def is_llm_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` was written by the llm engine, a ProbeCallback or a validation (not a toy experiment).

    llm rows carry ``phase`` / ``examples_seen`` (and probe rows a ``statistic``); the toy experiments write tidy
    ``{step, probe, metric, value}`` rows. Only the first row is read; an unreadable file counts as an llm run so
    that the page can name its error.
    """
    try:
        _, first = next(iter_jsonl(Path(run_dir) / "metrics.jsonl"), (0, None))
    except (ValueError, OSError):
        return True
    if first is None:
        return False
    return "metric" not in first and bool({"phase", "examples_seen", "statistic", "loss"} & set(first))


def default_run_folder(candidates: Iterable[str | Path] = ("runs", "results")) -> str:
    """The first candidate folder that holds llm runs (``runs/`` after a run, else the committed ``results/``)."""
    candidates = [str(c) for c in candidates]
    for folder in candidates:
        if Path(folder).is_dir() and list_run_dirs(folder, llm_only=True):
            return folder
    return candidates[0]


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """Return the run's ``config.json`` as a dict (empty when the run has none)."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return {}
    return _read_json_file(path)


def _read_json_file(path: Path) -> Any:
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    return read_json(path)  # toykit's reader: file, line and column of invalid JSON, non-UTF-8 bytes named


def _number(value: Any, where: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except OverflowError:  # an integer like 10**400: beyond float64, shown as +-inf
        return math.inf if value > 0 else -math.inf


def _count(value: Any, where: str) -> int:
    number = _number(value, where)
    if not math.isfinite(number) or not number.is_integer() or number < 0:
        raise ValueError(f"{where}: expected a whole number >= 0, got {value!r}")
    return int(number)


def _tidy_rows_of(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """Turn one metrics.jsonl object into tidy rows (a tidy row stays one row; a TRL-style row is melted)."""
    if "step" not in row:
        raise ValueError(f"{where}: row has no 'step' (keys: {sorted(row)})")
    step = _count(row["step"], f"{where}: step")
    examples = row.get("examples_seen", step)
    base = {"phase": str(row.get("phase", "")), "step": step,
            "examples_seen": _count(examples, f"{where}: examples_seen")}
    if "value" in row:
        statistic = row.get("statistic", row.get("metric"))
        if statistic is None:
            raise ValueError(f"{where}: row has a 'value' but no 'statistic' (keys: {sorted(row)})")
        probe = row.get("probe") or TRAIN_PROBE
        return [{**base, "probe": str(probe), "statistic": str(statistic),
                 "value": _number(row["value"], f"{where}: value")}]
    skip = {"step", "examples_seen", "phase", "probe", "epoch", "time", "elapsed_s"}
    return [{**base, "probe": TRAIN_PROBE, "statistic": str(k), "value": _number(v, f"{where}: {k}")}
            for k, v in row.items() if k not in skip and not isinstance(v, str)]


def read_run_metrics(run_dir: str | Path, run: str | None = None) -> pd.DataFrame:
    """Read a run's ``metrics.jsonl`` into a tidy table with columns :data:`TIDY_COLUMNS`.

    Args:
        run_dir: a run directory (or a ``metrics.jsonl`` file itself).
        run: the label put in the ``run`` column; default the directory's name.

    Raises:
        ValueError: the file is missing, empty, or a line is not valid JSON / lacks ``step`` (file and line named).
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise ValueError(f"{path} does not exist: is {path.parent} a run directory?")
    if not path.is_file():
        raise ValueError(f"{path} is not a file: is {path.parent} a run directory?")
    label = run if run is not None else path.parent.name
    rows: list[dict[str, Any]] = []
    for lineno, obj in iter_jsonl(path, skip_cut_last_line=True):  # a killed run's last row may be cut
        rows.extend(_tidy_rows_of(obj, f"{path}:{lineno}"))
    if not rows:
        raise ValueError(f"{path} holds no metric rows")
    table = pd.DataFrame(rows)
    table.insert(0, "run", label)
    return table[list(TIDY_COLUMNS)]


def read_runs(run_dirs: Iterable[str | Path]) -> pd.DataFrame:
    """Read several runs into one tidy table, labelled by directory name (made unique by the parent's name)."""
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise ValueError("no run directories given")
    names = [d.name for d in dirs]
    labels = [f"{d.parent.name}/{d.name}" if names.count(d.name) > 1 else d.name for d in dirs]
    return pd.concat([read_run_metrics(d, run=label) for d, label in zip(dirs, labels)], ignore_index=True)


# ----------------------------------------------------------------------------------------------------------------------
# The paper's metric logs.

def read_paper_metrics(path: str | Path, run: str | None = None,
                       eval_every: int = PAPER_EVAL_EVERY) -> pd.DataFrame:
    """Read a metrics log written by the paper's code into a tidy table with columns :data:`TIDY_COLUMNS`.

    Line ``i`` (0-based) is the evaluation after ``i * eval_every`` training examples; the paper's runs used 100, 500
    or 1000 (:data:`PAPER_EVAL_CHOICES`) and the log does not record which. A log whose step key (``step``,
    ``global_step``, ...) falls holds an appended restart: each restart is labelled ``<run> (restart k)`` and starts
    again at 0 examples (``table.attrs["segments"]`` counts them). The label is the file's name, or its folder's
    when the name is generic (``prob_train_metrics``). Probe log-probs become
    statistic ``logp_sum`` (summed over tokens, as the paper logged them), ``<probe>_A_o`` becomes ``A_norm``
    (||A||_F averaged over tokens); ``argmax_prob_logits`` is the TEACHER-FORCED argmax along the y+ prefix
    (probe ``argmax_teacher_forced``). NaN values (bare ``NaN`` in the file) are kept as NaN.

    Raises:
        ValueError: the file is missing or empty, or a line is not a JSON object of numbers (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"paper metrics file {path} does not exist or is not a file")
    if eval_every <= 0:
        raise ValueError(f"eval_every must be > 0, got {eval_every}")
    with path.open("rb") as fh:
        head = fh.read(8)
    if head.startswith((b"\x93NUMPY", b"PK\x03\x04", b"\x80")):  # .npy, .npz / zip, pickle
        raise ValueError(f"{path} is a binary file ({path.suffix or 'no suffix'}), not the paper's metrics log: "
                         f"the reader takes JSON lines (.jsonl / .json), one object of numbers per evaluation")
    label = run if run is not None else _paper_label(path)
    rows: list[dict[str, Any]] = []
    segment, evaluation, last_step = 1, 0, None
    for lineno, obj in iter_jsonl(path):  # bare NaN (the paper's code) is accepted
        step = next((obj[k] for k in _PAPER_STEP_KEYS if isinstance(obj.get(k), (int, float))), None)
        if step is not None and last_step is not None and step < last_step:  # an appended restart
            segment, evaluation = segment + 1, 0
        last_step = step if step is not None else last_step
        name = label if segment == 1 else f"{label} (restart {segment})"
        base = {"run": name, "phase": "paper", "step": evaluation, "examples_seen": evaluation * eval_every}
        for key, value in obj.items():
            if key in _PAPER_STEP_KEYS:
                continue
            probe, statistic = _paper_key(key)
            rows.append({**base, "probe": probe, "statistic": statistic,
                         "value": _number(value, f"{path}:{lineno}: {key}")})
        evaluation += 1
    if not rows:
        raise ValueError(f"paper metrics file {path} holds no evaluations")
    table = pd.DataFrame(rows)[list(TIDY_COLUMNS)]
    table.attrs["segments"] = segment  # > 1: the log holds appended restarts, each its own curve
    return table


def _paper_label(path: Path) -> str:
    """The file's name, or its folder's when the name is generic (``<run>/prob_train_metrics.jsonl``)."""
    stem = path.stem.lower()
    if any(g in stem for g in _GENERIC_STEMS) and path.parent.name not in ("", "."):
        return path.parent.name
    return path.stem


def _paper_key(key: str) -> tuple[str, str]:
    if key.startswith(_PAPER_LOGP_PREFIX):
        return key[len(_PAPER_LOGP_PREFIX):], "logp_sum"
    if key.endswith(_PAPER_NORM_SUFFIX):
        return key[: -len(_PAPER_NORM_SUFFIX)], "A_norm"
    return _PAPER_SCALARS.get(key, (key, "value"))


# ----------------------------------------------------------------------------------------------------------------------
# Validation outputs.

def read_claims(run_dir: str | Path) -> pd.DataFrame:
    """Read a validation run's ``claims.json`` into a table: one row per claim.

    Accepts a list of claim objects or ``{"claims": [...]}``; the columns are the union of the claims' keys, with
    ``name`` first and ``passed`` (from ``passed``/``holds``/``pass``): True, False, or None when not measured.

    Raises:
        ValueError: the run has no ``claims.json``, or it is malformed (the file is named).
    """
    path = Path(run_dir)
    if path.is_dir():
        path = path / "claims.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist: {path.parent} is not a validation run")
    data = _read_json_file(path)
    claims = data.get("claims", data) if isinstance(data, dict) else data
    if isinstance(claims, dict):
        claims = [{"name": k, **(v if isinstance(v, dict) else {"value": v})} for k, v in claims.items()]
    if not isinstance(claims, list) or not all(isinstance(c, dict) for c in claims):
        raise ValueError(f"{path}: expected a list of claim objects (or {{'claims': [...]}}), got {type(claims).__name__}")
    if not claims:
        raise ValueError(f"{path} lists no claims")
    table = pd.DataFrame(claims)
    for flag in ("passed", "holds", "pass"):
        if flag in table.columns:
            verdicts = table.pop(flag)  # None / NaN = not measured, kept apart from a failure
            table["passed"] = [_verdict(v, f"{path}: claim {i}: {flag}") for i, v in enumerate(verdicts)]
            break
    if "name" not in table.columns:
        for alt in ("claim", "id", "key"):
            if alt in table.columns:
                table = table.rename(columns={alt: "name"})
                break
    first = [c for c in ("name", "passed") if c in table.columns]
    return table[first + [c for c in table.columns if c not in first]]


_VERDICTS = {"true": True, "false": False, "yes": True, "no": False, "pass": True, "fail": False, "passed": True,
             "failed": False, "held": True, "null": None, "none": None, "": None}


def _verdict(value: Any, where: str) -> bool | None:
    """A claim's verdict: True, False, or None (not measured); strings like "false" are read, not truthy."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _VERDICTS:
        return _VERDICTS[value.strip().lower()]
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    raise ValueError(f"{where}: expected true, false or null, got {value!r}")


def read_report(run_dir: str | Path) -> str | None:
    """Return the text of the run's ``report.md``, or None when it has none."""
    path = Path(run_dir) / "report.md"
    return path.read_text() if path.exists() else None


_IMAGE = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def read_report_parts(run_dir: str | Path) -> list[tuple[str, str]]:
    """Split the run's ``report.md`` into ("markdown", text) and ("image", path or URL) parts, in order.

    Images with relative paths are resolved against the run directory (a browser cannot fetch them from the
    markdown, so the app shows them as images); a missing image becomes a markdown note naming the file.
    """
    text = read_report(run_dir)
    if text is None:
        return []
    parts: list[tuple[str, str]] = []
    pos = 0
    for match in _IMAGE.finditer(text):
        if text[pos: match.start()].strip():
            parts.append(("markdown", text[pos: match.start()]))
        target = match.group(2)
        if "://" in target:
            parts.append(("image", target))
        else:
            path = (Path(run_dir) / target).resolve()
            parts.append(("image", str(path)) if path.is_file() else ("markdown", f"*(figure {target} is missing)*"))
        pos = match.end()
    if text[pos:].strip():
        parts.append(("markdown", text[pos:]))
    return parts


# ----------------------------------------------------------------------------------------------------------------------
# Tables for plotting.

def _reduction_of(statistic: str) -> str | None:
    name = statistic.lower()
    for reduction, names in REDUCTIONS.items():
        if name in names:
            return reduction
    return None


def select_reduction(table: pd.DataFrame, reduction: str) -> pd.DataFrame:
    """Keep the probe log-prob rows reduced over tokens as ``reduction`` ("summed" or "mean")."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    keep = table["statistic"].map(_reduction_of) == reduction
    return table[keep & (table["probe"] != TRAIN_PROBE)].reset_index(drop=True)


def probe_curves(table: pd.DataFrame, reduction: str = "summed", phase: str | None = None,
                 probes: Iterable[str] | None = None) -> pd.DataFrame:
    """Return the probe log-prob curves: columns run, phase, examples_seen, probe, value, sorted for plotting."""
    curves = select_reduction(table, reduction)
    if phase is not None:
        curves = curves[curves["phase"] == phase]
    if probes is not None:
        curves = curves[curves["probe"].isin(list(probes))]
    cols = ["run", "phase", "examples_seen", "probe", "value"]
    return curves[cols].sort_values(["run", "phase", "probe", "examples_seen"]).reset_index(drop=True)


def training_curves(table: pd.DataFrame, statistics: Iterable[str] | None = None) -> pd.DataFrame:
    """Return the training rows (loss, rewards/..., TRL names): columns run, phase, step, statistic, value."""
    rows = table[table["probe"] == TRAIN_PROBE]
    if statistics is not None:
        rows = rows[rows["statistic"].isin(list(statistics))]
    return rows[["run", "phase", "step", "statistic", "value"]].sort_values(["run", "phase", "statistic", "step"]) \
        .reset_index(drop=True)


def overlay_with_paper(curves: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Put run curves and the paper's summed curves on one axis of training progress for the probes both have.

    Progress is ``examples_seen / max examples_seen`` within each (run, phase) and within the paper file, so curves of
    runs of different lengths share the x axis. Returns columns source, probe, progress, value.

    Args:
        curves: output of :func:`probe_curves` (summed; per-token means are not comparable with the paper's log).
        paper: output of :func:`read_paper_metrics`.
    """
    ours = curves.assign(source=curves["run"] + " (" + curves["phase"] + ")")
    theirs = paper[paper["statistic"] == "logp_sum"].assign(source="paper: " + paper["run"])
    shared = set(ours["probe"]) & set(theirs["probe"])
    both = pd.concat([ours[ours["probe"].isin(shared)], theirs[theirs["probe"].isin(shared)]], ignore_index=True)
    if both.empty:
        return pd.DataFrame(columns=["source", "probe", "progress", "value"])
    last = both.groupby("source")["examples_seen"].transform("max").clip(lower=1)
    both = both.assign(progress=both["examples_seen"] / last)
    return both[["source", "probe", "progress", "value"]].sort_values(["source", "probe", "progress"]) \
        .reset_index(drop=True)


def curve_summary(curves: pd.DataFrame) -> pd.DataFrame:
    """Return the first and last value of every curve and their difference (last minus first).

    Args:
        curves: output of :func:`probe_curves` (columns run, phase, examples_seen, probe, value).

    Returns:
        one row per (run, phase, probe) with columns start, end, change, and the examples seen at the end.
    """
    if curves.empty:
        return pd.DataFrame(columns=["run", "phase", "probe", "start", "end", "change", "examples_seen"])
    ordered = curves.sort_values("examples_seen")
    groups = ordered.groupby(["run", "phase", "probe"], sort=True)
    out = pd.DataFrame({"start": groups["value"].first(), "end": groups["value"].last(),
                        "examples_seen": groups["examples_seen"].last()})
    out["change"] = out["end"] - out["start"]
    return out[["start", "end", "change", "examples_seen"]].reset_index()


def claims_score(claims: pd.DataFrame) -> tuple[int, int]:
    """Return (claims that held, claims with a verdict) for a table from :func:`read_claims`; None = no verdict."""
    if "passed" not in claims.columns:
        return 0, 0
    verdicts = [v for v in claims["passed"] if v is not None]
    return sum(v is True for v in verdicts), len(verdicts)
